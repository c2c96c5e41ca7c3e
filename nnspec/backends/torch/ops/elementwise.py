"""Elementwise ops' torch rules: each op's reference lowering beside its code emitter.

The unary and binary ops read their meaning from the op table's `POINTWISE` rows (the torch function by name and
its keyword arguments, the Python operator torch tensors overload for it, whether it takes a Python number);
`where`, `cast`, `dropout`, `drop_path` and `clamp` carry attributes, and `straight_through` is no one torch function,
so these have rules of their own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.dtypes import TORCH_DTYPES
from nnspec.backends.torch.frame import Frame
from nnspec.backends.torch.function import FunctionGen
from nnspec.backends.torch.layout import align, align_tensor, cast_to, input_types
from nnspec.backends.torch.lazy import F, runtime, torch
from nnspec.backends.torch.ops.nn import linear_activation
from nnspec.backends.torch.promotion import operand, pointwise_result, promote_types, result_type
from nnspec.backends.torch.pysrc import Expr, call, method
from nnspec.backends.torch.rules import emits, lowers
from nnspec.backends.torch.source import spec_named
from nnspec.compiler.ir import Node
from nnspec.compiler.ops.elementwise import BINARY, POINTWISE, UNARY, Pointwise

_MODULES = {"torch": torch, "F": F}


@functools.cache
def torch_function(op: str) -> Callable[..., torch.Tensor]:
    """The torch callable computing pointwise op `op`: its row's function, with the row's keyword arguments."""
    row = POINTWISE[op]
    module, _, name = row.torch.rpartition(".")
    fn = getattr(_MODULES[module], name)
    return functools.partial(fn, **dict(row.torch_kwargs)) if row.torch_kwargs else fn


def _code(row: Pointwise, *operands: Expr) -> Expr:
    """The row's operator where torch tensors overload one (`a + b`, `-x`, `~m`), else its function call."""
    if row.infix is not None:
        return P.Unary(row.infix, operands[0]) if row.arity == 1 else P.binop(row.infix, *operands)
    return call(row.torch, *operands, **dict(row.torch_kwargs))


def takes_number(user: Node, operand: str) -> bool:
    """May `operand` of `user` be written as a Python number (torch's operators and `torch.where` take one beside
    a tensor), so a scalar constant there need not be a tensor?"""
    if user.op in POINTWISE:
        return POINTWISE[user.op].takes_numbers
    return user.op == "where" and user.inputs[0] != operand   # where's branches, not its condition


@lowers(*UNARY)
def _lower_unary(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return torch_function(node.op)(ins[0])


@emits(*UNARY)
def _emit_unary(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    src = fn.graph[node.inputs[0]]
    if src.op == "linear" and linear_activation(fn, src) is node:
        # the linear applied it; the value keeps the name the spec gave it
        return fn.let(ins[0], node.name) if spec_named(fn.graph, node) else ins[0]
    return _code(POINTWISE[node.op], ins[0])


@lowers(*BINARY)
def _lower_binary(frame: Frame, node: Node, ins: list[Any]) -> Any:
    names = node.tensor_type.names
    a, b = (align_tensor(x, t, names) for x, t in zip(ins, input_types(frame, node), strict=True))
    return torch_function(node.op)(a, b).to(TORCH_DTYPES[node.tensor_type.dtype])


@emits(*BINARY)
def _emit_binary(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    out = node.tensor_type
    ts = [fn.in_type(node, i) for i in range(2)]
    a, b = (align(x, t, out.names) for x, t in zip(ins, ts, strict=True))
    got = pointwise_result(POINTWISE[node.op], operand(ins[0], ts[0]), operand(ins[1], ts[1]))
    return cast_to(fn, _code(POINTWISE[node.op], a, b), got, out.dtype)


@lowers("where")
def _lower_where(frame: Frame, node: Node, ins: list[Any]) -> Any:
    names = node.tensor_type.names
    c, a, b = (align_tensor(x, t, names) for x, t in zip(ins, input_types(frame, node), strict=True))
    return torch.where(c, a, b).to(TORCH_DTYPES[node.tensor_type.dtype])


@emits("where")
def _emit_where(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    out = node.tensor_type
    ts = [fn.in_type(node, i) for i in range(3)]
    c, a, b = (align(x, t, out.names) for x, t in zip(ins, ts, strict=True))
    got = result_type(operand(ins[1], ts[1]), operand(ins[2], ts[2]))
    return cast_to(fn, call("torch.where", c, a, b), got, out.dtype)


@lowers("cast")
def _lower_cast(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return ins[0].to(TORCH_DTYPES[node.attrs["dtype"]])


@emits("cast")
def _emit_cast(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    if fn.mg.options.kept_casts and fn.graph[node.inputs[0]].op == "param":
        fn.mg.note(f"torch: {fn.graph.name}.{node.name}: the parameter cast to {node.attrs['dtype']} once and kept "
                   "until it changes (inference)")
        return call(fn.mg.helper("cast_weight"), P.Name("self"), node.name, ins[0], fn.dtype(node.attrs["dtype"]))
    return method(ins[0], "to", fn.dtype(node.attrs["dtype"]))


@lowers("dropout")
def _lower_dropout(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return F.dropout(ins[0], node.attrs["p"], training=frame.module.training)


@emits("dropout")
def _emit_dropout(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return call("F.dropout", ins[0], node.attrs["p"], P.dotted("self.training"))


@lowers("straight_through")
def _lower_straight_through(frame: Frame, node: Node, ins: list[Any]) -> Any:
    names = node.tensor_type.names
    x, y = (align_tensor(v, t, names) for v, t in zip(ins, input_types(frame, node), strict=True))
    return (x + (y - x).detach()).to(TORCH_DTYPES[node.tensor_type.dtype])


@emits("straight_through")
def _emit_straight_through(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    """`x + (y - x).detach()`: y's value (up to the rounding of x + (y - x)), x's gradient."""
    out = node.tensor_type
    ts = [fn.in_type(node, i) for i in range(2)]
    x, y = (align(v, t, out.names) for v, t in zip(ins, ts, strict=True))
    got = promote_types(ts[0].dtype, ts[1].dtype)
    return cast_to(fn, P.binop("+", x, method(P.binop("-", y, x), "detach")), got, out.dtype)


@lowers("drop_path")
def _lower_drop_path(frame: Frame, node: Node, ins: list[Any]) -> Any:
    dim = input_types(frame, node)[0].index(node.attrs["axis"])
    return runtime.drop_path(ins[0], node.attrs["p"], dim, frame.module.training)


@emits("drop_path")
def _emit_drop_path(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    dim = fn.in_type(node, 0).index(node.attrs["axis"])
    return call(fn.mg.helper("drop_path"), ins[0], node.attrs["p"], dim, P.dotted("self.training"))


@lowers("clamp")
def _lower_clamp(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return torch.clamp(ins[0], node.attrs["min"], node.attrs["max"])


@emits("clamp")
def _emit_clamp(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    bounds = {k: node.attrs[k] for k in ("min", "max") if node.attrs[k] is not None}
    return call("torch.clamp", ins[0], **bounds)
