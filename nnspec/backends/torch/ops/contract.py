"""The contract ops' torch rules: each op's reference lowering beside its code emitter.

The emitter runs every contraction it can as one GEMM call (`F.linear`, `@` on 2-d or batched operands) on views
of its operands, so the way a product is written (`y[B, T, e, f] = x * w`, `matmul(x, w, over=h)`, a linear)
does not change its speed. Axes are grouped from the names alone: batch axes (in both operands and the result),
contracted axes (in both, not in the result) and each operand's free axes. A group of several axes is flattened
into one GEMM dimension; the groups of the right-hand operand (a weight, usually) are taken in the order it holds
them, so for a contiguous weight the flatten is a view and the weight is never copied per call (torch.einsum
permutes and copies it; the copy was 59% of a dense-MoE forward). These GEMMs sum in torch.einsum's order.
With `regroup_contractions` (-O2) two more cases avoid the copy, summing in another order: operands whose axes
another covers (gates `[B, T, E]` beside `h[B, T, E, F]`) are multiplied elementwise first, which leaves a
two-operand product, and a weight `[k1, out, k2]` runs as a GEMM batched over k1, then summed over k1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.frame import Frame
from nnspec.backends.torch.function import FunctionGen
from nnspec.backends.torch.layout import align, input_types, permute
from nnspec.backends.torch.lazy import torch
from nnspec.backends.torch.pysrc import Expr, call, method
from nnspec.backends.torch.rules import emits, lowers
from nnspec.compiler.ir import Node, TensorType
from nnspec.compiler.ops.contract import einsum_string

Size = Callable[[sympy.Basic], Expr]


def contract(ins: list[Expr], ts: list[TensorType], out: TensorType,
             linear: Callable[[], Expr] = lambda: P.dotted("F.linear"), size: Size | None = None,
             regroup: bool = False, bind: Callable[[Expr, str], Expr] | None = None) -> Expr:
    """Sum of products by axis names: `linear()` (the function to call) or `@` on views where it is a (batched)
    matrix product, else `torch.einsum`. `size` prints an axis size (needed to split a flattened group back).
    `regroup`: also where that sums in another order than torch.einsum (see `TorchOptions`). `bind` names the
    product (a statement of its own, given its layout as a shape comment) before a flattened group is split back,
    so no line grows too long."""
    if regroup:
        ins, ts = _premultiply(list(ins), list(ts))
    if len(ins) == 2:
        mm = _matmul(ins[0], ins[1], ts[0], ts[1], out, linear, size, regroup=regroup, bind=bind)
        if mm is None:   # `w * x`: the second operand alone may not be laid out for a view
            mm = _matmul(ins[1], ins[0], ts[1], ts[0], out, linear, size, copy=False, regroup=regroup, bind=bind)
        if mm is not None:
            return mm
    return call("torch.einsum", einsum_string(ts, out), *ins)


def _premultiply(ins: list[Expr], ts: list[TensorType]) -> tuple[list[Expr], list[TensorType]]:
    """With three or more operands, multiply elementwise each one whose axes another's cover (cost: that
    operand's size, below the contraction's): `gates * silu(h) * w2` becomes `(gates * silu(h)) * w2`."""
    while len(ins) > 2:
        pair = next(((i, j) for i in range(len(ts)) for j in range(len(ts))
                     if i != j and set(ts[i].names) <= set(ts[j].names)), None)
        if pair is None:
            break
        i, j = pair
        big, t = ins[j], ts[j]
        prod = P.binop("*", big, align(ins[i], ts[i], t.names)) if j < i else \
            P.binop("*", align(ins[i], ts[i], t.names), big)
        keep = [k for k in range(len(ins)) if k not in (i, j)]
        first = min(i, j)
        ins = [*[ins[k] for k in keep if k < first], prod, *[ins[k] for k in keep if k > first]]
        ts = [*[ts[k] for k in keep if k < first], t, *[ts[k] for k in keep if k > first]]
    return ins, ts


def _flatten(x: Expr, start: int, count: int, rank: int) -> Expr:
    """Merge `count` adjacent dims from `start` (a view where strides allow); a size-1 dim where there are none."""
    if count == 0:
        return method(x, "unsqueeze", start)
    if count == 1:
        return x
    return method(x, "flatten", start - rank if start + count == rank else start,
                  -1 if start + count == rank else start + count - 1)


def _unflatten(y: Expr, d: int, axes: list[str], t: TensorType, size: Size | None) -> Expr | None:
    """Split dim `d` of `y` back into `axes` (of `t`); None without a way to print their sizes."""
    if len(axes) == 1:
        return y
    if len(axes) == 0:
        return method(y, "squeeze", d)
    if size is None:
        return None
    return method(y, "unflatten", d, P.TupleExpr(tuple(size(t.axis(n).size) for n in axes)))  # type: ignore[union-attr]


def _matmul(a: Expr, b: Expr, ta: TensorType, tb: TensorType, out: TensorType, linear: Callable[[], Expr],
            size: Size | None, copy: bool = True, regroup: bool = False,
            bind: Callable[[Expr, str], Expr] | None = None) -> Expr | None:
    A, B, O = ta.names, tb.names, out.names
    if any(n not in O and n not in (B if n in A else A) for n in (*A, *B)):
        return None                         # an axis summed within one operand: einsum's business
    batch = [n for n in O if n in A and n in B]
    k = [n for n in B if n in A and n not in O]
    fa = [n for n in O if n in A and n not in B]
    fb = [n for n in B if n not in A]
    if not k or not (fa or fb):
        return None
    if not batch:
        left = permute(a, [A.index(n) for n in (*fa, *k)])
        left = _flatten(left, len(fa), len(k), len(fa) + len(k))
        if tuple(B) == (*k, *fb):            # fb empty is always this order: a matrix-vector product
            right = _flatten(_flatten(b, len(k), len(fb), len(B)), 0, len(k), len(k) + 1) if fb else \
                _flatten(b, 0, len(k), len(k))
            y = P.binop("@", left, right)
        elif regroup and tuple(B) != (*fb, *k) and (lead := _leading_contracted(B, k, fb)):
            # b is [k1, fb, k2]: no view of it is one matrix, so run k1 as batch axes, then sum them
            batched = TensorType((*(tb.axis(n) for n in lead), *out.axes), out.dtype)  # type: ignore[misc]
            y = _matmul(a, b, ta, tb, batched, linear, size, bind=bind)
            return None if y is None else method(y, "sum", len(lead) - 1 if len(lead) == 1 else
                                                 P.TupleExpr(P.ints(list(range(len(lead))))))
        elif tuple(B) == (*fb, *k) or copy:  # as nn.Linear keeps its weight, [out, in]; else copied as einsum does
            right = permute(b, [B.index(n) for n in (*fb, *k)])
            right = _flatten(_flatten(right, len(fb), len(k), len(B)), 0, len(fb), len(fb) + 1)
            y = call(linear(), left, right)
        else:
            return None
        both, t_full = (*fa, *fb), len(fa)
        layout = [*fa, "*".join(fb)]
    else:
        nb = len(batch)
        left = permute(a, [A.index(n) for n in (*batch, *fa, *k)])
        left = _flatten(_flatten(left, nb + len(fa), len(k), len(A)), nb, len(fa), nb + len(fa) + 1)
        right = permute(b, [B.index(n) for n in (*batch, *k, *fb)])
        right = _flatten(_flatten(right, nb + len(k), len(fb), len(B)), nb, len(k),
                         nb + len(k) + 1)
        y = P.binop("@", left, right)
        if not fb:
            y = method(y, "squeeze", -1)
        both, t_full = (*batch, *fa, *fb), nb + bool(fa)   # fa is one dim until split below
        if not fa:
            y = method(y, "squeeze", nb)
        layout = [*batch, *(["*".join(fa)] if fa else []), *(["*".join(fb)] if fb else [])]
    if bind is not None and size is not None and (len(fb) > 1 or (len(fa) > 1 and batch)):
        y = bind(y, "(" + ", ".join(layout) + ")")
    y2 = _unflatten(y, t_full, fb, tb, size) if fb else y
    if y2 is None:
        return None
    if len(fa) > 1 and batch:
        y2 = _unflatten(y2, nb, fa, ta, size)
        if y2 is None:
            return None
    return permute(y2, [both.index(n) for n in O])


def _leading_contracted(B: tuple[str, ...], k: list[str], fb: list[str]) -> list[str]:
    """The contracted axes before b's first free axis when the rest of b is [fb, k2] (k2 not empty)."""
    lead = list(B[:next(i for i, n in enumerate(B) if n in fb)]) if fb else []
    rest = B[len(lead):]
    inner = [n for n in k if n not in lead]
    return lead if lead and inner and tuple(rest) == (*fb, *inner) else []


@lowers("einsum")
def _lower_einsum(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return torch.einsum(einsum_string(input_types(frame, node), node.tensor_type), *ins)


@emits("einsum")
def _emit_einsum(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    types = [fn.in_type(node, i) for i in range(len(ins))]
    regroup = fn.mg.options.regroup_contractions
    if fn.mg.options.fused_linear:   # a product with a [features, in] matrix (an LM head) runs as linears do
        return contract(ins, types, node.tensor_type, lambda: fn.mg.helper("linear"), fn.size, regroup,
                        lambda e, c: fn.let(e, "product", comment=c))
    return contract(ins, types, node.tensor_type, size=fn.size, regroup=regroup,
                    bind=lambda e, c: fn.let(e, "product", comment=c))
