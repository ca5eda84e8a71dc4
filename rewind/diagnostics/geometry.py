"""Representation geometry of two token-aligned activation sets X0 (base) and X1 (finetune), both [tokens, features].

- linear CKA (centred): ||X0c^T X1c||_F^2 / (||X0c^T X0c||_F ||X1c^T X1c||_F); 1 when X1 is X0 up to an orthogonal
  map and an isotropic scale.
- Procrustes: after centring, raw = ||X1c - X0c||_F / ||X0c||_F and residual = min over orthogonal R of
  ||X1c R - X0c||_F / ||X0c||_F; 0 when X1 is a rotated (and shifted) copy of X0, so what it leaves is the
  non-isometric part of the change.
- Gram distortion: ||K1 - K0||_F / ||K0||_F with K the pairwise cosine Gram matrix of the tokens (uncentred).
- drift: per-token cosine and norm change, averaged.
Computed on the tensors' device, in fp32 (Procrustes in fp64).
"""

from __future__ import annotations

import torch

EPS = 1e-12


def _centred(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x = x.to(dtype)
    return x - x.mean(0, keepdim=True)


def linear_cka(x0: torch.Tensor, x1: torch.Tensor) -> float:
    a, b = _centred(x0), _centred(x1)
    if a.shape[0] < max(a.shape[1], b.shape[1]):
        # Token-space form, equal by <A A^T, B B^T> = ||A^T B||_F^2: n x n instead of d x d matrices.
        ka, kb = a @ a.T, b @ b.T
        return float((ka * kb).sum() / (torch.linalg.matrix_norm(ka) * torch.linalg.matrix_norm(kb) + EPS))
    cross = torch.linalg.matrix_norm(a.T @ b) ** 2
    return float(cross / (torch.linalg.matrix_norm(a.T @ a) * torch.linalg.matrix_norm(b.T @ b) + EPS))


def procrustes(x0: torch.Tensor, x1: torch.Tensor) -> dict[str, float]:
    """{'raw': ..., 'residual': ...}: relative distance before and after the best orthogonal alignment of X1 to X0.

    min_R ||B R - A||_F^2 = ||A||_F^2 + ||B||_F^2 - 2 ||B^T A||_* (nuclear norm), in fp64 so that a residual near 0
    survives the subtraction; with fewer tokens than features, ||B^T A||_* = ||S_B U_B^T A||_* (thin SVD of B) keeps
    every matrix at tokens x features.
    """
    a, b = _centred(x0, torch.float64), _centred(x1, torch.float64)
    if a.shape[0] < a.shape[1]:
        u, s, _ = torch.linalg.svd(b, full_matrices=False)
        cross = s.unsqueeze(1) * (u.T @ a)
    else:
        cross = b.T @ a
    nuclear = torch.linalg.svdvals(cross).sum()
    norm_a, norm_b = torch.linalg.matrix_norm(a), torch.linalg.matrix_norm(b)
    residual2 = (norm_a**2 + norm_b**2 - 2 * nuclear).clamp_min(0)
    return {
        "raw": float(torch.linalg.matrix_norm(b - a) / (norm_a + EPS)),
        "residual": float(residual2.sqrt() / (norm_a + EPS)),
    }


def gram_distortion(x0: torch.Tensor, x1: torch.Tensor, max_tokens: int = 1024) -> float:
    """Cosine-Gram distortion over at most `max_tokens` tokens, evenly spaced (deterministic, O(n^2) memory)."""
    n = x0.shape[0]
    if n > max_tokens:
        index = torch.linspace(0, n - 1, max_tokens, device=x0.device).round().long()
        x0, x1 = x0[index], x1[index]
    z0 = torch.nn.functional.normalize(x0.float(), dim=1)
    z1 = torch.nn.functional.normalize(x1.float(), dim=1)
    k0, k1 = z0 @ z0.T, z1 @ z1.T
    return float(torch.linalg.matrix_norm(k1 - k0) / (torch.linalg.matrix_norm(k0) + EPS))


def drift(x0: torch.Tensor, x1: torch.Tensor) -> dict[str, float]:
    """Token by token: mean cosine, mean cosine drift 1 - cos, mean norm ratio, mean |log norm ratio|."""
    x0, x1 = x0.float(), x1.float()
    cosine = torch.nn.functional.cosine_similarity(x0, x1, dim=1, eps=EPS)
    ratio = torch.linalg.vector_norm(x1, dim=1) / (torch.linalg.vector_norm(x0, dim=1) + EPS)
    return {
        "cosine": float(cosine.mean()),
        "cosine_drift": float((1 - cosine).mean()),
        "norm_ratio": float(ratio.mean()),
        "norm_drift": float(ratio.clamp_min(EPS).log().abs().mean()),
    }


def compare(x0: torch.Tensor, x1: torch.Tensor, gram_tokens: int = 1024) -> dict[str, float]:
    """Every measure above for one module's activations."""
    if x0.shape != x1.shape:
        raise ValueError(f"activation sets differ in shape: {tuple(x0.shape)} vs {tuple(x1.shape)}")
    fit = procrustes(x0, x1)
    return {
        "n_tokens": int(x0.shape[0]),
        "cka": linear_cka(x0, x1),
        "procrustes_raw": fit["raw"],
        "procrustes_residual": fit["residual"],
        "gram_distortion": gram_distortion(x0, x1, gram_tokens),
        **drift(x0, x1),
    }
