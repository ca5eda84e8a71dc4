"""Issue 7, property tests of the path math (hypothesis): random shapes, ranks, block sizes and alphas in [0, 1]."""

from __future__ import annotations

import math
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rewind.errors import RewindError
from rewind.paths import Bound
from rewind.paths.cayley import Cayley, rotate_add
from rewind.paths.dense import Dense
from rewind.paths.dora import Dora
from rewind.paths.linear import Linear
from rewind.schedule import Schedule
from rewind.updates.ia3 import Scale
from rewind.updates.lora import DoRA, LowRank
from rewind.updates.oft import Rotation, cayley, neumann_series, rotate

FAST = settings(max_examples=40, deadline=None, database=None)
alphas = st.floats(0, 1, allow_nan=False)
seeds = st.integers(0, 2**31 - 1)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _skew(blocks, b, seed, norm=1.0, dtype=torch.float64):
    M = torch.randn(blocks, b, b, generator=_gen(seed), dtype=dtype)
    Q = M - M.transpose(-2, -1)
    return Q * (norm / torch.linalg.matrix_norm(Q).clamp_min(1e-12).view(-1, 1, 1))


def _bound(delta, w0):
    return Bound("w", delta, w0, torch.empty_like(w0))


def _close(got: torch.Tensor, want: torch.Tensor, rel: float = 2e-6) -> None:
    """fp32 results against an fp64 reference: within `rel` of the values' scale."""
    scale = float(want.abs().max()) if want.numel() else 1.0
    torch.testing.assert_close(got.double(), want, rtol=0, atol=rel * max(scale, 1e-30) * 4)


@FAST
@given(
    out=st.integers(1, 24),
    fan_in=st.integers(1, 24),
    rank=st.integers(1, 6),
    scale=st.floats(0.05, 4),
    alpha=alphas,
    seed=seeds,
)
def test_lowrank_linear_path_is_w0_plus_alpha_s_BA(out, fan_in, rank, scale, alpha, seed):
    """fp32, as models are (the paths compute in fp32 at most: W1 and Cayley generators are kept in fp32)."""
    g = _gen(seed)
    w0 = torch.randn(out, fan_in, generator=g)
    B, A = torch.randn(out, rank, generator=g), torch.randn(rank, fan_in, generator=g)
    item = _bound(LowRank(B, A, scale), w0)
    Linear([item]).write([alpha])
    _close(item.out, w0.double() + alpha * scale * (B.double() @ A.double()))
    dense = _bound(LowRank(B, A, scale), w0)
    Dense([dense]).write([alpha])  # the same line, through W1
    _close(dense.out, w0.double() + alpha * scale * (B.double() @ A.double()))


@FAST
@given(
    out=st.integers(1, 16),
    blocks=st.integers(1, 3),
    b=st.integers(2, 6),
    rank=st.integers(1, 4),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    detour=alphas,
    terms=st.sampled_from([None, 2, 3, 5]),
    seed=seeds,
)
def test_alpha_zero_is_the_base_bit_for_bit_on_every_path(out, blocks, b, rank, dtype, detour, terms, seed):
    g = _gen(seed)
    fan_in = blocks * b
    w0 = torch.randn(out, fan_in, generator=g).to(dtype)
    deltas = [
        (Linear, LowRank(torch.randn(out, rank, generator=g), torch.randn(rank, fan_in, generator=g), 0.7)),
        (Linear, Scale(1 + 0.1 * torch.randn(out, 1, generator=g))),
        (Dense, LowRank(torch.randn(out, rank, generator=g), torch.randn(rank, fan_in, generator=g), 0.7)),
        (Cayley, Rotation(_skew(blocks, b, seed, 0.3, torch.float32), terms)),
        (Dense, Rotation(_skew(blocks, b, seed, 0.3, torch.float32), terms)),
        (
            Dora,
            DoRA(
                torch.randn(out, rank, generator=g),
                torch.randn(rank, fan_in, generator=g),
                0.7,
                1 + torch.rand(out, generator=g),
            ),
        ),
    ]
    for path_cls, delta in deltas:
        item = _bound(delta, w0)
        path = path_cls([item])
        path.write([0.0])
        assert torch.equal(item.out, w0), path_cls.name
        path.write([detour])  # and back: alpha -> alpha' -> 0 gives the base again
        path.write([0.0])
        assert torch.equal(item.out, w0), path_cls.name


@FAST
@given(blocks=st.integers(1, 4), b=st.integers(1, 12), s=st.floats(0, 50), seed=seeds)
def test_exact_cayley_is_orthogonal_for_any_skew_generator_and_scale(blocks, b, s, seed):
    Q = _skew(blocks, b, seed, norm=1.0) if b > 1 else torch.zeros(blocks, 1, 1, dtype=torch.float64)
    R = cayley(s * Q, None)
    eye = torch.eye(b, dtype=torch.float64).expand_as(R)
    torch.testing.assert_close(R @ R.transpose(-2, -1), eye, rtol=0, atol=1e-10)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(blocks, dtype=torch.float64), rtol=0, atol=1e-8)


def _peft_series(Q: torch.Tensor, terms: int) -> torch.Tensor:
    """R of peft 0.21's own Cayley-Neumann branch (OFTRotationModule._cayley_batch), from Q's upper triangle."""
    from peft.tuners.oft.layer import OFTRotationModule

    b = Q.shape[-1]
    rows, cols = torch.triu_indices(b, b, 1)
    stub = types.SimpleNamespace(rows=rows, cols=cols)
    stub._pytorch_skew_symmetric = lambda vec, size: OFTRotationModule._pytorch_skew_symmetric(stub, vec, size)
    return OFTRotationModule._cayley_batch(stub, Q[:, rows, cols], b, True, terms)


@FAST
@given(blocks=st.integers(1, 3), b=st.integers(2, 8), terms=st.integers(0, 9), norm=st.floats(0, 0.9), seed=seeds)
def test_neumann_series_is_peft_series(blocks, b, terms, norm, seed):
    Q = _skew(blocks, b, seed, norm)
    mine = neumann_series(Q, terms)
    # The explicit sum peft's loop computes: I + 2Q + 2Q^2 + ... + 2Q^(m-1) + Q^m, m = max(terms - 1, 3), for
    # terms >= 3; I + 2Q for 2 terms; I for fewer.
    if terms <= 1:
        explicit = torch.zeros_like(Q)
    elif terms == 2:
        explicit = 2 * Q
    else:
        m = max(terms - 1, 3)
        explicit = sum(2 * torch.linalg.matrix_power(Q, k) for k in range(1, m)) + torch.linalg.matrix_power(Q, m)
    torch.testing.assert_close(mine, explicit, rtol=1e-12, atol=1e-12)
    eye = torch.eye(b, dtype=Q.dtype).expand_as(Q)
    torch.testing.assert_close(eye + mine, _peft_series(Q, terms), rtol=1e-12, atol=1e-12)


@FAST
@given(
    out=st.integers(1, 12),
    blocks=st.integers(1, 4),
    b=st.integers(2, 8),
    share=st.booleans(),
    terms=st.sampled_from([None, 2, 3, 4, 5, 8]),
    scale=st.sampled_from(["linear", "sqrt"]),
    alpha=alphas,
    seed=seeds,
)
def test_cayley_path_at_alpha_is_rotate_w0_by_cayley_of_scaled_q(out, blocks, b, share, terms, scale, alpha, seed):
    w0 = torch.randn(out, blocks * b, generator=_gen(seed + 1))
    Q = _skew(1 if share else blocks, b, seed, norm=0.5).float()  # block_share: one block repeated
    item = _bound(Rotation(Q, terms), w0)
    Cayley([item], cayley_scale=scale).write([alpha])
    s = alpha if scale == "linear" else math.sqrt(alpha)
    _close(item.out, rotate(w0.double(), cayley(s * Q.double(), terms)))
    Cayley([item], cayley_scale=scale).write([1.0])  # alpha = 1 on either scale: the finetune, peft's merge
    _close(item.out, rotate(w0.double(), cayley(Q.double(), terms)))
    _close(item.out, Rotation(Q, terms).merged(w0).double())


@FAST
@given(
    out=st.integers(1, 16),
    fan_in=st.integers(1, 16),
    rank=st.integers(1, 4),
    scale=st.floats(0.05, 4),
    alpha=alphas,
    seed=seeds,
)
def test_dora_path_normalises_w0_plus_alpha_s_BA_to_the_interpolated_magnitude(out, fan_in, rank, scale, alpha, seed):
    g = _gen(seed)
    w0 = torch.randn(out, fan_in, generator=g)
    B, A = torch.randn(out, rank, generator=g), torch.randn(rank, fan_in, generator=g)
    m = 0.5 + torch.rand(out, generator=g)
    item = _bound(DoRA(B, A, scale, m), w0)
    Dora([item]).write([alpha])
    v = w0.double() + alpha * scale * (B.double() @ A.double())
    m_alpha = (1 - alpha) * torch.linalg.vector_norm(w0.double(), dim=1) + alpha * m.double()
    _close(item.out, (m_alpha / torch.linalg.vector_norm(v, dim=1)).unsqueeze(1) * v, rel=1e-5)
    Dora([item]).write([1.0])  # alpha = 1: the finetune, peft's merge
    _close(item.out, DoRA(B, A, scale, m).merged(w0).double(), rel=1e-5)


@FAST
@given(
    out=st.integers(0, 12),
    blocks=st.integers(1, 4),
    b=st.sampled_from([2, 3, 8, 16, 32, 33]),
    share=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
    strided_out=st.booleans(),
    seed=seeds,
)
def test_rotate_add_matches_add_of_rotate(out, blocks, b, share, dtype, strided_out, seed):
    """The Cayley path's rotation into its output (bmm on strided block views, then += w0) against the einsum
    formula it replaced: the same arithmetic, up to the matmul kernel's summation order (a rounding of the max)."""
    w0 = torch.randn(out, blocks * b, generator=_gen(seed)).to(dtype)
    d = (0.1 * _skew(1 if share else blocks, b, seed)).to(dtype)
    dest = torch.empty(blocks * b, out, dtype=dtype).t() if strided_out else torch.empty_like(w0)
    assert rotate_add(w0, d, dest) is dest
    want = torch.add(w0, rotate(w0, d))
    tol = 2 * torch.finfo(dtype).eps * (float(want.abs().max()) if want.numel() else 0.0)
    for got in (dest, rotate_add(w0, d)):
        torch.testing.assert_close(got, want, rtol=0, atol=tol)


@FAST
@given(alpha=alphas, layers=st.integers(1, 40))
def test_ramp_runs_from_alpha_to_one(alpha, layers):
    ramp = Schedule.parse("ramp").layer_alphas(alpha, layers)
    assert len(ramp) == layers and ramp[0] == alpha
    assert ramp[-1] == pytest.approx(1.0 if layers > 1 else alpha, abs=1e-12)
    assert all(a <= b + 1e-12 for a, b in zip(ramp, ramp[1:])) and all(alpha <= a <= 1 + 1e-12 for a in ramp)


@FAST
@given(alpha=alphas, strengths=st.lists(st.floats(1e-6, 1e3), min_size=1, max_size=30))
def test_balanced_caps_every_layer_at_alpha(alpha, strengths):
    per_layer = dict(enumerate(strengths))
    out = Schedule.parse("balanced").layer_alphas(alpha, len(strengths), per_layer)
    median = sorted(strengths)[(len(strengths) - 1) // 2 : len(strengths) // 2 + 1]
    median = sum(median) / len(median)
    for u, a in zip(strengths, out):
        assert 0 <= a <= alpha + 1e-12
        if u <= median:
            assert a == alpha  # at or below the median: untouched
        else:
            assert a == pytest.approx(alpha * median / u, rel=1e-9)  # above: scaled down to the median's size
    assert max(out) == pytest.approx(alpha)


@FAST
@given(values=st.lists(alphas, min_size=0, max_size=8), layers=st.integers(1, 8))
def test_layer_list_length_must_match(values, layers):
    schedule = Schedule.parse(values)
    if len(values) == layers:
        assert schedule.layer_alphas(0.5, layers) == [float(v) for v in values]
        if values:
            text = ",".join(repr(v) for v in values)
            assert Schedule.parse(text).layer_alphas(0.5, layers) == [float(v) for v in values]
    else:
        with pytest.raises(RewindError, match=f"has {len(values)} alphas; the model has {layers} layers"):
            schedule.layer_alphas(0.5, layers)
