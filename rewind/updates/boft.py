"""BOFT's format (peft_type BOFT): butterfly-factored orthogonal finetuning, and its natural path `boft`.

peft 0.21 (boft/layer.py) stores per Linear the generators boft_R [m, D, b, b] (m butterfly factors, D blocks of b;
only the skew part S = (R - R^T)/2 counts) and a vector boft_s [out, 1]. Factor i is B_i = P_i blockdiag(Cayley(
S_i)) P_i^T, Cayley(S) = (I - S)(I + S)^-1 exactly (no Neumann series), P_i peft's block butterfly permutation of
the input features (the identity when m = 1); M = B_(m-1) ... B_1 B_0 and the merge is
    W1 = diag(s) W0 M^T.
peft builds m > 1 factors only where its CUDA extension loads (else it trains one), so m is read from the file.

The `boft` path scales every generator and moves s on the IA3 line: S(alpha) = alpha S, s(alpha) = 1 + alpha (s - 1),
    W(alpha) = diag(s(alpha)) W0 M(alpha)^T,
which is peft's merge of the BOFT adapter with alpha * boft_R and 1 + alpha (boft_s - 1): an ordinary adapter at
every alpha, so `--format adapter` writes it. Each M(alpha) stays orthogonal (exact Cayley).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..errors import RewindError
from ..paths.base import PathKind
from .base import Delta, Kind, only
from .oft import cayley, rotate


@dataclass
class Butterfly(Delta):
    """BOFT: W1 = diag(s) W0 M^T, M = B_(m-1) ... B_0, B_i = P_i blockdiag(Cayley(S_i)) P_i^T."""

    S: torch.Tensor  # [m, D, b, b] skew generators
    s: torch.Tensor  # [out] output scale
    perms: tuple[torch.Tensor, ...]  # m index vectors: P_i[k, perms[i][k]] = 1
    additive = False

    def merged(self, w0):
        return at(self, w0.float(), 1.0)

    def shape(self, want):
        return self.s.numel(), self.S.shape[1] * self.S.shape[-1]


def at(delta: Butterfly, w0: torch.Tensor, alpha: float) -> torch.Tensor:
    """W(alpha) = diag(s(alpha)) W0 M(alpha)^T, in w0's dtype: W0 B_0(alpha)^T ... B_(m-1)(alpha)^T, each factor
    applied as a column gather, a block-diagonal rotation and a gather back (no in x in matrix)."""
    S = delta.S.to(w0.device, w0.dtype)
    w = w0
    for i, perm in enumerate(delta.perms):
        perm = perm.to(w0.device)
        # X P_i = X[:, P_i^-1], X blockdiag(R)^T = rotate(X, R), X P_i^T = X[:, P_i]
        w = rotate(w[:, torch.argsort(perm)], cayley(alpha * S[i], None))[:, perm]
    s = 1 + alpha * (delta.s.to(w0.device, w0.dtype) - 1)
    return w * s.unsqueeze(1)


def butterfly_perm(n: int, blocks: int, half: int, factors: int) -> torch.Tensor:
    """peft's block_butterfly_perm(n, b, r, n_butterfly_factor) as an index vector: within every run of n / blocks
    features, the runs of `half` are reordered evens first, then odds."""
    if factors == 0:
        return torch.arange(n)
    size = n // blocks
    step = size / half
    order = torch.cat((torch.arange(0, step, 2), torch.arange(1, step, 2)))
    within = torch.cat([torch.arange(int(pos * half), int(pos * half + half)) for pos in order])
    return torch.arange(n).view(-1, size)[:, within].flatten()


def read(module, parts, config, shapes, shared):
    only(parts, {"boft_R", "boft_s"}, module)
    if config.get("bias", "none") != "none":
        raise RewindError("BOFT adapters with trained biases are not supported")
    if config.get("fan_in_fan_out"):
        raise RewindError("fan_in_fan_out (GPT-2 Conv1D) adapters are not supported")
    R, s = parts["boft_R"].float(), parts["boft_s"].float()
    if R.dim() != 4 or R.shape[-1] != R.shape[-2] or s.dim() != 2 or s.shape[1] != 1:
        raise RewindError(
            f"BOFT module {module}: boft_R is {tuple(R.shape)}, boft_s {tuple(s.shape)} (expected "
            f"[factors, blocks, b, b] and [out, 1]); the adapter is broken"
        )
    factors, blocks, b = R.shape[0], R.shape[1], R.shape[-1]
    fan_in = shapes[f"{module}.weight"][1]
    if blocks * b != fan_in or (factors > 1 and (blocks % 2 ** (factors - 1) or b % 2)):
        raise RewindError(
            f"BOFT module {module}: {factors} factors of {blocks} blocks of {b} do not fit in_features {fan_in}"
        )
    perms = tuple(butterfly_perm(fan_in, int(blocks / 2**i), b // 2, factors - 1) for i in range(factors))
    return {f"{module}.weight": Butterfly(0.5 * (R - R.transpose(-2, -1)), s.flatten(), perms)}


def scale(parts, delta, alpha, w0, **options):
    return {"boft_R": parts["boft_R"] * alpha, "boft_s": 1 + alpha * (parts["boft_s"] - 1)}


class Boft(PathKind):
    name = "boft"
    summary = "Cayley(alpha*S) per butterfly factor, s(alpha) = 1 + alpha(s - 1) (BOFT only)"

    @classmethod
    def accepts(cls, delta):
        return isinstance(delta, Butterfly)

    def _write(self, moving):
        # fp32 throughout, rounded once into `out` (the generators are small: solving them again costs little)
        for item, alpha in moving:
            item.out.copy_(at(item.delta, item.w0.float(), alpha))


def count(model, config) -> int:
    """The parameters peft's BOFT trains on `model`, without building its layers (each computes a dense in x in
    permutation per factor): per targeted Linear, factors x blocks x b x b generators and the output scale.
    Factors as the config says (where peft's CUDA extension does not load, peft trains one); modules_to_save are
    not counted."""
    from peft.tuners.tuners_utils import check_target_module_exists

    head = model.get_output_embeddings()
    linear = {key: m for key, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}
    if isinstance(config.target_modules, str) and config.target_modules.lower() == "all-linear":
        config = dataclasses.replace(config, target_modules=set(linear))  # as peft expands it
    total = 0
    for key, module in linear.items():
        if check_target_module_exists(config, key):
            b = config.boft_block_size or module.in_features // config.boft_block_num
            total += config.boft_n_butterfly_factor * module.in_features * b + module.out_features
    return total


KIND = Kind("BOFT", read, prefixes=("boft_",), scale=scale, paths=(Boft,), count=count)
