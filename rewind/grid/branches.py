"""Per-row points in a module's forward: one branch kind per way an update enters a layer.

A branch hooks one module of the resident base and, while points are set, changes its forward for each batch row
by that row's point. Every kind computes W(alpha) x the way rewind's path writes W(alpha), so a row equals the
in-place model at its point up to rounding:
- LowRank:  y += alpha s B(A x)                                (LoRA, rsLoRA, PiSSA/MiLoRA residual, AdaLoRA, VeRA)
- Scale:    x or y times 1 + alpha (l - 1)                     (IA3)
- Rotation: x_j += x_j D_j(alpha), D = Cayley(s(alpha) Q) - I  (OFT, cayley path)
- Dense:    y += alpha (x dW^T), dW = W1 - W0                  (dense path; linear: DoRA, full FT, MiSS, LoHa, LoKr)
- Dora:     y = f(alpha) (W0 x + alpha s B(A x))               (DoRA, dora path: f is the path's row factor)
- PerPoint: the module run once per point with its tensor at that point (norms: small tensors only)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..errors import RewindError
from ..paths.base import PathKind
from ..paths.cayley import _rotation_minus_identity
from ..updates.base import Delta
from ..updates.ia3 import ia3_factor
from ..updates.lora import base_norms


class Rows:
    """The point of every batch row ([rows] indices into the points), moved to each device once."""

    def __init__(self, index: torch.Tensor, points: int):
        self.index, self.points, self._count = index, points, len(index)  # the count: checked at every call
        self._on: dict[torch.device, tuple] = {}
        # k rows per point, point by point in order: branches may then batch over the points in one call
        k = len(index) // points
        self.blocked = len(index) == k * points and torch.equal(index, torch.arange(points).repeat_interleave(k))

    def _cached(self, device):
        if device not in self._on:
            index = self.index.to(device)
            groups = [(p, _contiguous((index == p).nonzero().flatten())) for p in range(self.points)]
            self._on[device] = index, [(p, rows) for p, rows in groups if rows is not None]
        return self._on[device]

    def gather(self, values: torch.Tensor, like: torch.Tensor) -> PerRow:
        """Per-point values ([points] or [points, n]) as per-row values on `like`'s device and dtype."""
        return PerRow(values.to(like.device, like.dtype)[self._cached(like.device)[0]])

    def groups(self, device) -> list[tuple[int, torch.Tensor | slice]]:
        """(point, its rows) for every point that has rows: a slice (a view, no copy) where they are adjacent."""
        return self._cached(device)[1]

    def __len__(self):
        return self._count


def _contiguous(rows: torch.Tensor) -> torch.Tensor | slice | None:
    if not len(rows):
        return None
    first, last = int(rows[0]), int(rows[-1])
    return slice(first, last + 1) if last - first + 1 == len(rows) else rows


class PerRow:
    """Per-row values ([rows] or [rows, n]) and their views that broadcast against a tensor of each dimension, made
    once: a branch scales by them at every call, and making the view each time cost more host time than the
    product it feeds (4 us against 4 us on a 2-core CPU)."""

    def __init__(self, values: torch.Tensor):
        self.values, self._views = values, {}

    def like(self, t: torch.Tensor) -> torch.Tensor:
        view = self._views.get(t.dim())
        if view is None:
            view = self._views[t.dim()] = by_row(self.values, t)
        return view


def by_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[rows] or [rows, n] values viewed to broadcast against `like` ([rows, ..., n])."""
    middle = [1] * (like.dim() - values.dim())
    return values.view(values.shape[0], *middle, *values.shape[1:])


def add(y: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    # in place when nothing records a graph: the output is the module's own fresh tensor
    return y.add_(d) if not torch.is_grad_enabled() else y + d


def add_linear(y: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """y + alpha F.linear(h, weight): one addmm into y where `add` may work in place (one kernel, not a product and
    an add: a decoding step calls every branch, and on a small model its host time is per op, not per flop)."""
    if torch.is_grad_enabled() or not y.is_contiguous():
        return y + F.linear(h, weight) * alpha
    y.view(-1, y.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), weight.t(), alpha=alpha)
    return y


def add_blocked(y: torch.Tensor, h: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """y + h[p] weights[p] for the rows of each point p, rows blocked by point (h [points, rows of a point x tokens,
    in], weights [points, in, out]): one baddbmm into y viewed the same way where `add` may work in place."""
    if torch.is_grad_enabled() or not y.is_contiguous():
        return y + torch.bmm(h, weights).view(y.shape)
    y.view(weights.shape[0], -1, y.shape[-1]).baddbmm_(h, weights)
    return y


def scaled_transposes(B: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """[points, r, out]: B^T times each point's alpha s, for add_blocked (rows blocked by point, one point among
    them): one baddbmm per step adds every point's update, not a per-row scale and an addmm. The product in fp32,
    rounded once to B's dtype."""
    return (B.t().float().unsqueeze(0) * scales.to(B.device, torch.float32).view(-1, 1, 1)).to(B.dtype)


class Branch:
    """One module's change at a row's point. `input_side` kinds rewrite the input, the others the output."""

    input_side = False

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.rows: Rows | None = None  # set while points are set; None: the module runs as the base

    def hooks(self) -> list[Unwrap]:
        """Wrap the module's forward (an attribute on the instance, undone by the handle's `remove`). Not a forward
        hook: a decoding step calls every branch, and on a 2-core CPU a hook cost 3 us of host time per call where
        the module's own matmul cost 4, the wrapper under 1."""
        module = self.module
        self._inner = module.forward  # the class's, or a wrapper already there (another branch, accelerate's)
        wrapper = self._forward_input if self.input_side else self._forward_output
        handle = Unwrap(module, module.__dict__.get("forward"), wrapper)
        module.forward = wrapper
        return [handle]

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.rows):
            raise RewindError(f"grid: the batch has {x.shape[0]} rows, the points were set for {len(self.rows)}")
        return x

    def _forward_input(self, x, *args, **kwargs):
        if self.rows is not None:
            x = self.apply(self._check(x))
        return self._inner(x, *args, **kwargs)

    def _forward_output(self, x, *args, **kwargs):
        y = self._inner(x, *args, **kwargs)
        return y if self.rows is None else self.post(self._check(x), y)

    def prepare(self, alphas: torch.Tensor, rows: Rows) -> None:
        """Take the points: `alphas` [points, tensors] for this branch's tensors, fp64 on the CPU."""
        self.rows = rows

    def clear(self) -> None:
        self.rows = None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def post(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Unwrap:
    """Puts back the forward a Branch wrapped: the one the instance had, or none (the class's). Wrappers on one
    module nest, so they come off in the reverse order of `hooks`, and only while on top (`on_top`): under another
    wrapper (another grid's), putting the old forward back would drop that one too."""

    def __init__(self, module: torch.nn.Module, previous, wrapper):
        self.module, self.previous, self.wrapper = module, previous, wrapper

    def on_top(self) -> bool:
        return self.module.__dict__.get("forward") is self.wrapper

    def remove(self) -> None:
        if self.previous is None:
            del self.module.forward
        else:
            self.module.forward = self.previous


class LowRankUpdate:
    """y + alpha s B(A x) per row, for LowRank and Dora: with rows blocked by point, one baddbmm with each point's
    B^T pre-scaled (`scaled_transposes`), A x from the input's SharedProduct; else a per-row scale of A x and one
    addmm."""

    def __init__(self, B: torch.Tensor, A: torch.Tensor, like: torch.Tensor):
        self.B, self.A = B.to(like.device, like.dtype), A.to(like.device, like.dtype)
        self.shared, self._columns = SharedProduct([self.A]), None  # None: the product is this update's alone

    def share(self, shared: SharedProduct, columns: slice | None) -> None:
        self.shared, self._columns = shared, columns

    def prepare(self, scales: torch.Tensor, rows: Rows) -> None:
        """`scales` [points]: each point's alpha s."""
        self._Bt = scaled_transposes(self.B, scales) if rows.blocked else None
        self._s = None if rows.blocked else rows.gather(scales, self.A)
        self.shared.clear()

    def add_to(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self._Bt is not None:
            h = self.shared.product(x, len(self._Bt))
            return add_blocked(y, h if self._columns is None else h[..., self._columns], self._Bt)
        h = F.linear(x, self.A)
        return add_linear(y, h.mul_(self._s.like(h)), self.B)


def _dead() -> None:
    """A weak reference to nothing: no input yet."""


class SharedProduct:
    """x A^T for the low-rank updates of modules that may read one input (q, k and v; gate and up): their A stacked,
    one product per input for all, each update reading its columns. A decoding step is bound by host time per
    launch, and on a 7B model this takes 3 of a layer's 7 products away. The input is told by identity: a module
    with another input (o_proj beside q, k, v) computes the product again, unused columns and all."""

    def __init__(self, As: list[torch.Tensor]):
        self._At = (As[0] if len(As) == 1 else torch.cat(As)).t()  # one update alone: its A, not a copy
        self.clear()

    def product(self, x: torch.Tensor, points: int) -> torch.Tensor:
        """[points, rows of a point x tokens, stacked ranks], for rows blocked by point."""
        # The input is referenced weakly: holding it would keep every layer's prefill activations alive (a 7B
        # prefill of 704 x 256 tokens ran out of memory), and a dead reference never matches a new tensor.
        if self._x() is not x:
            self._x, self._h = weakref.ref(x), torch.matmul(x.reshape(points, -1, x.shape[-1]), self._At)
        return self._h

    def clear(self) -> None:
        self._x, self._h = _dead, None


def share_products(updates: Sequence[LowRankUpdate]) -> None:
    """One SharedProduct for `updates` (of modules with the same input size, dtype and device)."""
    if len(updates) < 2:
        return
    shared, start = SharedProduct([u.A for u in updates]), 0
    for update in updates:
        update.share(shared, slice(start, start + len(update.A)))
        start += len(update.A)


class LowRank(Branch):
    def __init__(self, module, delta):
        super().__init__(module)
        self.update, self.scale = LowRankUpdate(delta.B, delta.A, module.weight), delta.scale

    def prepare(self, alphas, rows):
        super().prepare(alphas, rows)
        self.update.prepare(alphas[:, 0] * self.scale, rows)

    def post(self, x, y):
        return self.update.add_to(y, x)

    def clear(self):
        super().clear()
        self.update.shared.clear()  # the last input and its product: freed with the points


class Scale(Branch):
    """IA3 scales the input of feed-forward modules (vector [1, in]) and the output of the others ([out, 1]): the
    output includes the bias, which peft's merge scales with the rows (adapters._ia3 reads it as a Scale too)."""

    def __init__(self, module, delta):
        super().__init__(module)
        self.input_side = delta.vector.shape[0] == 1  # as adapters._ia3 tells feed-forward modules apart
        self.vector = delta.vector.to(module.weight.device, torch.float32).flatten()

    def prepare(self, alphas, rows):
        super().prepare(alphas, rows)
        factors = ia3_factor(self.vector, alphas[:, :1].to(self.vector))  # [points, n], as the path's fp32 factor
        self._f = rows.gather(factors, self.module.weight)

    def apply(self, x):
        return x * self._f.like(x)

    def post(self, x, y):
        return y.mul_(self._f.like(y)) if not torch.is_grad_enabled() else y * self._f.like(y)


class Rotation(Branch):
    """The cayley path writes W0 + W0 blockdiag(D)^T, so W(alpha) x = W0 (x + blockdiag(D)^T x): each input block
    x_j (a row vector) becomes x_j + x_j D_j, D computed by the path's own R - I from s(alpha) Q."""

    input_side = True

    def __init__(self, module, delta, s: Callable[[float], float]):
        super().__init__(module)
        self.Q = delta.Q.to(module.weight.device, torch.float32)
        self.terms, self.s = delta.neumann_terms, s

    def prepare(self, alphas, rows):
        super().prepare(alphas, rows)
        scales = torch.tensor([self.s(a) for a in alphas[:, 0].tolist()], dtype=torch.float32)
        sQ = self.Q.unsqueeze(0) * scales.to(self.Q.device).view(-1, 1, 1, 1)  # [points, blocks, b, b]
        self._D = _rotation_minus_identity(sQ, self.terms).to(self.module.weight.dtype)
        if rows.blocked:  # [points x blocks, b, b]: one bmm's batch (block_share: its one block for every block)
            b = self.Q.shape[-1]
            self._grouping = len(alphas), self.module.in_features // b, b
            self._D_flat = self._D.expand(*self._grouping, b).reshape(-1, b, b)

    def apply(self, x):
        if self.rows.blocked:  # all points in one x + x D: [points x blocks, rows of each x tokens, b]
            points, blocks, b = self._grouping
            grouped = x.reshape(points, -1, blocks, b).transpose(1, 2).reshape(points * blocks, -1, b)
            turned = torch.baddbmm(grouped, grouped, self._D_flat)  # fewer ops per step than an einsum and add
            return turned.view(points, blocks, -1, b).transpose(1, 2).reshape(x.shape)
        b = self.Q.shape[-1]
        blocks = x.reshape(*x.shape[:-1], x.shape[-1] // b, b)
        out = torch.empty_like(x)  # every row is in one group
        for p, idx in self.rows.groups(x.device):
            d = self._D[p].expand(blocks.shape[-2], b, b)  # block_share: one block for all
            turned = torch.einsum("...jk,jkc->...jc", blocks[idx], d).reshape(x[idx].shape)
            out[idx] = turned.add_(x[idx])
        return out


class Dense(Branch):
    """y += alpha (dW x) with dW = W1 - W0 kept whole: one more weight read per forward. `product(x, dW)` is the
    module's own map: F.linear for a Linear weight, a lookup for an Embedding, a plain add for a bias."""

    def __init__(self, module, delta: Delta, w0: torch.Tensor, product: Callable):
        super().__init__(module)
        self.dW, self.product = (delta.merged(w0) - w0.float()).to(w0.dtype), product

    def prepare(self, alphas, rows):
        super().prepare(alphas, rows)
        self._a = rows.gather(alphas[:, 0], self.dW)

    def post(self, x, y):
        d = self.product(x, self.dW)
        return add(y, d.mul_(self._a.like(d)))


class DenseLinear(Dense):
    """Dense on a Linear weight: y += (alpha x) dW^T, the row's alpha on its input so the product adds into y."""

    def __init__(self, module, delta: Delta, w0: torch.Tensor):
        super().__init__(module, delta, w0, F.linear)

    def prepare(self, alphas, rows):
        super().prepare(alphas, rows)
        self._alpha = float(alphas[0, 0]) if rows.points == 1 else None

    def post(self, x, y):
        if self._alpha is not None:  # one point: its alpha is addmm's own scalar, no per-row product
            return add_linear(y, x, self.dW, self._alpha)
        return add_linear(y, x * self._a.like(x), self.dW)


def bias_product(x, db):
    return db.expand(*x.shape[:-1], db.shape[0]).clone()


def embedding_product(module):
    if module.max_norm is not None:
        raise RewindError("grid: an Embedding with max_norm renormalises its weight in place; it cannot grid")
    return lambda ids, dW: F.embedding(ids, dW, module.padding_idx)


class Dora(Branch):
    """The dora path writes f * V(alpha), V(alpha) = W0 + alpha s B A and f = lerp(||W0||_row, m, alpha) /
    ||V(alpha)||_row: y = f (W0 x + alpha s B(A x)) (+ bias). f is computed per point as the path computes it, one
    [out, in] product per point when the points are set, not per forward."""

    def __init__(self, module, delta, w0):
        super().__init__(module)
        self.delta, self.w0, self.n0 = delta, w0, base_norms(w0)
        self.update = LowRankUpdate(delta.B, delta.A, module.weight)

    @torch.no_grad()
    def prepare(self, alphas, rows):
        super().prepare(alphas, rows)
        d, device = self.delta, self.w0.device
        B, A, m = (t.to(device, torch.float32) for t in (d.B, d.A, d.magnitude))
        factors = []
        for a in alphas[:, 0].tolist():
            v = torch.addmm(self.w0.float(), B, A, alpha=a * d.scale)
            factors.append(torch.lerp(self.n0, m, a) / torch.linalg.vector_norm(v, dim=1))
        self._f = rows.gather(torch.stack(factors), self.module.weight)
        self.update.prepare(alphas[:, 0] * d.scale, rows)

    def clear(self):
        super().clear()
        self.update.shared.clear()

    def post(self, x, y):
        bias = self.module.bias
        z = y if bias is None else y - bias
        z = self.update.add_to(z, x)
        z = z * self._f.like(z)
        return z if bias is None else z + bias


class PerPoint(Branch):
    """Any other module (RMSNorm, LayerNorm): each updated tensor written at every point by rewind's own path into
    a copy, and the module run once per point on that point's rows. Exact, but one copy of the tensor per point and
    one call per point: meant for small tensors (norm weights), not for weight matrices."""

    def __init__(self, module, leaves: dict[str, tuple[PathKind, torch.Tensor]]):
        super().__init__(module)
        self.leaves = leaves  # leaf -> (a path bound to one scratch tensor, that tensor)
        self._inside = False

    def hooks(self):
        return [self.module.register_forward_hook(self._run, with_kwargs=True)]

    def prepare(self, alphas, rows):
        super().prepare(alphas, rows)
        self._values = []  # per point: {leaf: its tensor at that point}
        for point in alphas.tolist():
            values = {}
            for (leaf, (path, scratch)), alpha in zip(self.leaves.items(), point):
                path.write([alpha])
                values[leaf] = scratch.clone()
            self._values.append(values)

    def _run(self, module, args, kwargs, output):
        if self.rows is None or self._inside:  # inside: functional_call below runs this module's hooks again
            return None
        if not isinstance(output, torch.Tensor):
            raise RewindError(f"grid: {type(module).__name__} returns {type(output).__name__}; it cannot grid")
        self._check(output)
        out = output.clone()
        self._inside = True
        try:
            for p, idx in self.rows.groups(output.device):
                sub_args, sub_kwargs = (
                    _rows_of(args, idx, len(out)),
                    dict(zip(kwargs, _rows_of(kwargs.values(), idx, len(out)))),
                )
                out[idx] = functional_call(module, self._values[p], tuple(sub_args), sub_kwargs)
        finally:
            self._inside = False
        return out


def _rows_of(values: Sequence, idx: torch.Tensor, rows: int) -> list:
    """The rows `idx` of every batch-first tensor argument; anything else as it is."""
    return [v[idx] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == rows else v for v in values]
