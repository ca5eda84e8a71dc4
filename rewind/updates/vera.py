"""VeRA's format (peft_type VERA): W1 = W0 + (lambda_b * B)(lambda_d * A), B and A the shared random projections
(saved once, outside the modules), sliced to each module's shape: a LowRank update."""

from __future__ import annotations

from ..errors import RewindError
from .base import Kind, only
from .lora import LowRank


def read(module, parts, config, shapes, shared):
    only(parts, {"vera_lambda_b", "vera_lambda_d"}, module)
    if "base_model.vera_A" not in shared:
        raise RewindError("VeRA adapter saved without its projections (save_projection=False): rewind needs them")
    out, fan_in = shapes[f"{module}.weight"]
    B = shared["base_model.vera_B"][:out] * parts["vera_lambda_b"].unsqueeze(-1)
    A = shared["base_model.vera_A"][:, :fan_in] * parts["vera_lambda_d"].unsqueeze(-1)
    return {f"{module}.weight": LowRank(B, A, 1.0)}


def scale(parts, delta, alpha, w0, **options):
    return {"vera_lambda_b": parts["vera_lambda_b"] * alpha}


KIND = Kind("VERA", read, prefixes=("vera_",), scale=scale)
