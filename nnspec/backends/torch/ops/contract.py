"""The contract ops' torch rules: each op's reference lowering beside its code emitter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.frame import Frame
from nnspec.backends.torch.function import FunctionGen
from nnspec.backends.torch.layout import input_types, permute
from nnspec.backends.torch.pysrc import Expr, call
from nnspec.backends.torch.rules import emits, lowers
from nnspec.compiler.ir import Node, TensorType
from nnspec.compiler.ops.contract import einsum_string


def contract(ins: list[Expr], ts: list[TensorType], out: TensorType,
             linear: Callable[[], Expr] = lambda: P.dotted("F.linear")) -> Expr:
    """Sum of products by axis names: `a @ b` (with permutes) where it is a (batched) matmul, `linear()` (the
    function to call) for a product with a [features, in] matrix, else `torch.einsum`."""
    if len(ins) == 2:
        mm = _matmul(ins[0], ins[1], ts[0], ts[1], out, linear)
        if mm is not None:
            return mm
    return call("torch.einsum", einsum_string(ts, out), *ins)


def _matmul(a: Expr, b: Expr, ta: TensorType, tb: TensorType, out: TensorType,
            linear: Callable[[], Expr]) -> Expr | None:
    A, B, O = ta.names, tb.names, out.names
    summed = [n for n in (*A, *(n for n in B if n not in A)) if n not in O]
    if len(summed) != 1 or summed[0] not in A or summed[0] not in B:
        return None
    k = summed[0]
    batch = [n for n in O if n in A and n in B]
    fa = [n for n in O if n in A and n not in B]
    fb = [n for n in O if n in B and n not in A]
    if not batch and len(fb) == 1 and tb.rank == 2:
        # x[..., k] against a matrix: F.linear when the matrix is [out, k] (as nn.Linear keeps it)
        left = permute(a, [A.index(n) for n in (*fa, k)])
        y = call(linear(), left, b) if (fb[0], k) == B else P.binop("@", left, b)
        return permute(y, [(*fa, *fb).index(n) for n in O])
    if len(fa) != 1 or len(fb) != 1 or len(batch) != len(set(A) & set(B)) - 1:
        return None
    left = permute(a, [A.index(n) for n in (*batch, fa[0], k)])
    right = permute(b, [B.index(n) for n in (*batch, k, fb[0])])
    y: Expr = P.binop("@", left, right)
    return permute(y, [(*batch, fa[0], fb[0]).index(n) for n in O])


@lowers("einsum")
def _lower_einsum(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return torch.einsum(einsum_string(input_types(frame, node), node.tensor_type), *ins)


@emits("einsum")
def _emit_einsum(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    types = [fn.in_type(node, i) for i in range(len(ins))]
    if fn.mg.options.fused_linear:   # a product with a [features, in] matrix (an LM head) runs as linears do
        return contract(ins, types, node.tensor_type, lambda: fn.mg.helper("linear"))
    return contract(ins, types, node.tensor_type)
