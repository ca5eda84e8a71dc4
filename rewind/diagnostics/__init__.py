"""Why a finetune forgets: weight-space, input-conditioned and representation diagnostics, and the arena.

    from rewind.diagnostics import Finetune, Probe, spectral, csd, activations, arena
    ft = Finetune("./oft-math", base="smollm2")                  # alpha 1 on the natural path
    spectral.run(ft, "diag/spectral")                            # per matrix, in W0's singular basis
    csd.run(ft, "diag/csd", Probe(limit=64))                     # E||dW h||^2 on the base's own inputs
    activations.run(ft, "diag/activations", Probe(limit=32))     # CKA, Procrustes, Gram, drift of module outputs
    arena.run(["./oft-math", "./lora-math"], "smollm2", "arena") # scores from sweeps + correlation with forgetting

Definitions: docs/diagnostics.md.
"""

from ..checkpoint import Finetune
from . import activations, arena, csd, geometry, spectral
from .data import Probe

__all__ = ["Finetune", "Probe", "activations", "arena", "csd", "geometry", "spectral"]
