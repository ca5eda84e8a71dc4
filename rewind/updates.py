"""What a finetune did to one base tensor, in the method's own parameterization.

Each kind knows the merged tensor W1 = what peft's `merge_and_unload` writes, and how to express the same update
with its trained parameter scaled by s (exact for every kind whose W1 - W0 is linear in that parameter).
Kinds never hold W0: it is passed in, so one Update serves the resident model and streaming export alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class Delta:
    additive = True  # W1 - W0 is linear in the trained parameter: the linear path is this method's natural path

    def merged(self, w0: torch.Tensor) -> torch.Tensor:
        """W1 in fp32."""
        raise NotImplementedError

    def strength(self, w0: torch.Tensor) -> float:
        """Update size used by the `balanced` layer schedule: ||W1 - W0||_F."""
        return float(torch.linalg.vector_norm(self.merged(w0) - w0.float()))


@dataclass
class LowRank(Delta):
    """W1 = W0 + scale * B @ A (LoRA, rsLoRA, PiSSA/MiLoRA converted, AdaLoRA, VeRA)."""

    B: torch.Tensor  # [out, r]
    A: torch.Tensor  # [r, in]
    scale: float

    def delta(self, device=None) -> torch.Tensor:
        return self.scale * (self.B.to(device).float() @ self.A.to(device).float())

    def merged(self, w0):
        return w0.float() + self.delta(w0.device)

    def strength(self, w0):
        return float(torch.linalg.vector_norm(self.delta(w0.device)))


@dataclass
class DoRA(Delta):
    """W1 = m / ||W0 + s B A||_row * (W0 + s B A). Not linear in B: its natural path is `dora` (paths/dora.py);
    `linear` (kept for sweeps that recorded it) and `dense` are the straight line to W1."""

    B: torch.Tensor
    A: torch.Tensor
    scale: float
    magnitude: torch.Tensor  # [out]

    def merged(self, w0):
        v = w0.float() + self.scale * (self.B.to(w0.device).float() @ self.A.to(w0.device).float())
        return (self.magnitude.to(w0.device).float() / torch.linalg.vector_norm(v, dim=1)).unsqueeze(1) * v


@dataclass
class Scale(Delta):
    """IA3: W1 = W0 * l, with l broadcast over rows ([out, 1]) or, for feed-forward modules, columns ([1, in])."""

    vector: torch.Tensor

    def factor(self, alpha: float) -> torch.Tensor:
        return ia3_factor(self.vector.float(), alpha)

    def merged(self, w0):
        return w0.float() * self.factor(1.0).to(w0.device).reshape(self._shape(w0))

    def _shape(self, w0):
        return self.vector.shape if w0.dim() == 2 else (-1,)  # a bias scales like the rows


@dataclass
class MissTiled(Delta):
    """MiSS (default and "mini"): the block [r, out] is added to every r-column slice of W0."""

    block: torch.Tensor  # [r, out]

    def merged(self, w0):
        out, fan_in = w0.shape
        r = self.block.shape[0]
        tiled = self.block.to(w0.device).float().t().repeat(1, -(-fan_in // r))[:, :fan_in]
        return w0.float() + tiled


@dataclass
class MissBat(Delta):
    """MiSS "bat": each r x r block W_ij of W0 becomes W_ij + W_ij @ B_i + B_i (linear in B, depends on W0)."""

    block: torch.Tensor  # [out / r, r, r]

    def merged(self, w0):
        out, fan_in = w0.shape
        b = self.block.to(w0.device).float()
        r = b.shape[-1]
        w = w0.float().reshape(out // r, r, fan_in // r, r).permute(2, 0, 1, 3)
        return (w + w @ b + b).permute(1, 2, 0, 3).reshape(out, fan_in)


@dataclass
class Replace(Delta):
    """Full finetune or peft's modules_to_save: W1 is stored whole."""

    w1: torch.Tensor

    def merged(self, w0):
        return self.w1.to(w0.device).float()


@dataclass
class Rotation(Delta):
    """OFT: W1 = W0 @ blockdiag(R)^T, R = Cayley(Q) per block, Q skew-symmetric ([blocks, b, b]).

    `neumann_terms` None means the exact Cayley map (I - Q)(I + Q)^-1; an int means peft's truncated series
    I + 2Q + 2Q^2 + ... which approximates (I + Q)(I - Q)^-1: the two rotate in opposite directions, so the
    adapter's own choice is always honoured.
    """

    Q: torch.Tensor  # [blocks, b, b], or [1, b, b] when peft's block_share repeats one block
    neumann_terms: int | None
    # coft: the Frobenius ball (radius eps/sqrt(blocks)) peft projects each block's generator onto before every use
    coft_radius: float | None = None
    additive = False

    @property
    def block_size(self) -> int:
        return self.Q.shape[-1]

    def merged(self, w0):
        return rotate(w0.float(), cayley(self.Q.to(w0.device).float(), self.neumann_terms))

    def strength(self, w0):
        return float(torch.linalg.vector_norm(self.Q.float()))


def ia3_factor(vector: torch.Tensor, alpha: float) -> torch.Tensor:
    """IA3's vector at alpha: l(alpha) = 1 + alpha (l - 1), so alpha 0 is the identity and 1 the trained l."""
    return 1 + alpha * (vector - 1)


def cayley(Q: torch.Tensor, neumann_terms: int | None) -> torch.Tensor:
    """R for a batch of skew-symmetric blocks, by the same formula peft 0.21 uses for the adapter's setting."""
    eye = torch.eye(Q.shape[-1], dtype=Q.dtype, device=Q.device).expand_as(Q)
    if neumann_terms is None:
        return torch.linalg.solve(eye + Q, eye - Q, left=False)
    return eye + neumann_series(Q, neumann_terms)


def neumann_series(Q: torch.Tensor, terms: int) -> torch.Tensor:
    """R - I for peft's Cayley-Neumann branch: 2Q + 2Q^2 + ... with the last power weighted 1.

    Mirrors peft's loop exactly, including that 3 and 4 terms both reach Q^3.
    """
    if terms <= 1:
        return torch.zeros_like(Q)
    if terms == 2:
        return 2 * Q
    out, power = 2 * Q, Q
    for _ in range(2, max(terms - 1, 3)):
        power = power @ Q
        out = out + 2 * power
    return out + power @ Q


def rotate(w: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """w @ blockdiag(R)^T for w [out, in], R [blocks or 1, b, b]."""
    out, fan_in = w.shape
    b = R.shape[-1]
    blocks = w.reshape(out, fan_in // b, b)
    R = R.expand(fan_in // b, b, b)
    return torch.einsum("ojk,jck->ojc", blocks, R).reshape(out, fan_in)
