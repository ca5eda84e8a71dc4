"""OFT's format (peft_type OFT): a block-diagonal rotation of W0's columns, each block the Cayley map of a skew
generator Q stored as its strict upper triangle. Its natural path is `cayley` (paths/cayley.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import RewindError
from .base import Delta, Field, Kind, number, only

# the cayley path's generator scale s(alpha): linear (default) or sqrt (--cayley-scale)
SCALES = {"linear": lambda a: a, "sqrt": lambda a: math.copysign(math.sqrt(abs(a)), a)}


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
    relative = False  # the balanced schedule compares generators: ||Q||_F itself

    @property
    def block_size(self) -> int:
        return self.Q.shape[-1]

    def merged(self, w0):
        return rotate(w0.float(), cayley(self.Q.to(w0.device).float(), self.neumann_terms))

    def strength(self, w0):
        return float(torch.linalg.vector_norm(self.Q.float()))

    def shape(self, want):
        return want  # checked by the reader against in_features


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


def read(module, parts, config, shapes, shared):
    only(parts, {"oft_R.weight"}, module)
    vec = parts["oft_R.weight"].float()  # [blocks, b(b-1)/2]: the strict upper triangle of each skew block
    b = int((1 + math.isqrt(1 + 8 * vec.shape[1])) // 2)
    rows, cols = torch.triu_indices(b, b, 1)
    Q = torch.zeros(vec.shape[0], b, b)
    Q[:, rows, cols] = vec
    Q = Q - Q.transpose(-2, -1)
    radius = None
    if config.get("coft"):
        # peft projects the generator onto a ball of radius eps/sqrt(blocks) before use; so do we, once.
        radius = config.get("eps", 6e-5) / math.sqrt(Q.shape[0])
        norms = torch.linalg.matrix_norm(Q).clamp_min(1e-30).view(-1, 1, 1)
        Q = torch.where(norms <= radius, Q, Q * (radius / norms))
    fan_in = shapes[f"{module}.weight"][1]
    if fan_in % b:
        raise RewindError(f"OFT module {module}: block size {b} does not divide in_features {fan_in}")
    if Q.shape[0] not in (1, fan_in // b):
        raise RewindError(f"OFT module {module}: {Q.shape[0]} blocks of {b} do not fit in_features {fan_in}")
    terms = config.get("num_cayley_neumann_terms", 5) if config.get("use_cayley_neumann", True) else None
    return {f"{module}.weight": Rotation(Q, terms, radius)}


def scale(parts, delta, alpha, w0, cayley_scale="linear", **options):
    """The generator peft will use (already projected when coft is on), scaled by s(alpha)."""
    rows, cols = torch.triu_indices(delta.block_size, delta.block_size, 1)
    return {"oft_R.weight": delta.Q[:, rows, cols] * SCALES[cayley_scale](alpha)}


def check_scale(name, delta, alpha, cayley_scale="linear", **options):
    """coft: peft projects each stored generator back onto its ball before every use, so a scaled generator outside
    the ball (possible where |s(alpha)| > 1, i.e. |alpha| > 1) would load as another rotation than this point's."""
    if delta.coft_radius is None:
        return
    norm = abs(SCALES[cayley_scale](alpha)) * float(torch.linalg.matrix_norm(delta.Q.float()).max())
    if norm > delta.coft_radius * (1 + 1e-6):  # rounding: a block on the ball at alpha 1 stays there
        raise RewindError(
            f"--format adapter: at alpha {alpha:g} the coft generator of {name} leaves peft's ball (norm "
            f"{norm:.3g} > eps/sqrt(blocks) = {delta.coft_radius:.3g}) and peft would project it back, loading "
            f"another point: use --format merged"
        )


def _terms(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


KIND = Kind(
    "OFT",
    read,
    prefixes=("oft_",),
    fields=(
        Field("num_cayley_neumann_terms", _terms, "a non-negative integer"),
        Field("eps", number, "a number"),
        Field("use_cayley_neumann", lambda v: isinstance(v, bool), "true or false"),
    ),
    scale=scale,
    check_scale=check_scale,
)
