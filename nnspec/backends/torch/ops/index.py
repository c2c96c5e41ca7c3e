"""The index ops' torch rules: each op's reference lowering beside its code emitter."""

from __future__ import annotations

from typing import Any

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.dtypes import TORCH_DTYPES
from nnspec.backends.torch.frame import Frame
from nnspec.backends.torch.function import FunctionGen
from nnspec.backends.torch.layout import align, align_tensor, axis_dim, cast_to, dim, input_types
from nnspec.backends.torch.lazy import torch
from nnspec.backends.torch.members import linear_group
from nnspec.backends.torch.pysrc import Expr, Lit, Slice, call, method
from nnspec.backends.torch.rules import emits, lowers
from nnspec.compiler.ir import Node
from nnspec.compiler.ops.index import concat_reference, stack_reference


@lowers("topk")
def _lower_topk(frame: Frame, node: Node, ins: list[Any]) -> Any:
    values, indices = torch.topk(ins[0], node.attrs["k"], dim=axis_dim(frame, node))
    return (values, indices)


@emits("topk")
def _emit_topk(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return call("torch.topk", ins[0], node.attrs["k"], dim=dim(fn.in_type(node, 0), node.attrs["axis"]))


@lowers("sort")
def _lower_sort(frame: Frame, node: Node, ins: list[Any]) -> Any:
    values, indices = torch.sort(ins[0], dim=axis_dim(frame, node), descending=node.attrs["descending"], stable=True)
    return (values, indices)


@emits("sort")
def _emit_sort(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return call("torch.sort", ins[0], dim=dim(fn.in_type(node, 0), node.attrs["axis"]),
                descending=node.attrs["descending"], stable=True)


@lowers("gather")
def _lower_gather(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return torch.gather(ins[0], axis_dim(frame, node), ins[1])


@emits("gather")
def _emit_gather(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return call("torch.gather", ins[0], dim(fn.in_type(node, 0), node.attrs["axis"]), ins[1])


@lowers("scatter")
def _lower_scatter(frame: Frame, node: Node, ins: list[Any]) -> Any:
    x, idx, src = ins
    dtype = TORCH_DTYPES[node.tensor_type.dtype]
    x, src = x.to(dtype), src.to(dtype)
    if node.attrs["reduce"] == "add":
        return x.scatter_add(axis_dim(frame, node), idx, src)
    return x.scatter(axis_dim(frame, node), idx, src)


@emits("scatter")
def _emit_scatter(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    x, idx, src = ins
    want = node.tensor_type.dtype
    x = cast_to(fn, x, fn.in_type(node, 0).dtype, want)
    src = cast_to(fn, src, fn.in_type(node, 2).dtype, want)
    name = "scatter_add" if node.attrs["reduce"] == "add" else "scatter"
    return method(x, name, dim(fn.in_type(node, 0), node.attrs["axis"]), idx, src)


@lowers("cumsum")
def _lower_cumsum(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return torch.cumsum(ins[0], dim=axis_dim(frame, node))


@emits("cumsum")
def _emit_cumsum(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return call("torch.cumsum", ins[0], dim=dim(fn.in_type(node, 0), node.attrs["axis"]))


@lowers("concat")
def _lower_concat(frame: Frame, node: Node, ins: list[Any]) -> Any:
    axis = node.attrs["axis"]
    types = input_types(frame, node)
    ref = concat_reference(types, axis)  # the same operand the shape rule aligned to
    assert ref is not None
    dim = ref.index(axis)
    shape = [frame.size(a.size) for a in ref.axes]
    parts = []
    for x, t in zip(ins, types, strict=True):
        y = align_tensor(x, t, ref.names)
        target = list(shape)
        target[dim] = y.shape[dim]
        parts.append(y.expand(target))
    return torch.cat(parts, dim=dim)


@emits("concat")
def _emit_concat(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    """Operands aligned by name with the first that has the axis; one lacking an axis is expanded over it."""
    axis = node.attrs["axis"]
    types = [fn.in_type(node, i) for i in range(len(ins))]
    ref = concat_reference(types, axis)  # the same operand the shape rule aligned to
    assert ref is not None
    parts = []
    for x, t in zip(ins, types, strict=True):
        y = align(x, t, ref.names, full=True)
        if any(n not in t.names for n in ref.names):
            y = method(y, "expand", *[Lit(-1) if a.name in t.names else Lit(1) if a.name == axis else fn.size(a.size)
                                      for a in ref.axes])
        parts.append(y)
    users = fn.users(node.name)
    if node.meta.get("weights_only") and len(users) == 1 and linear_group(fn.plan, fn.graph, users[0]):
        # the linear reads its nn.Linear modules (`linear_group`), which concatenates their weights itself
        fn.mg.note(f"torch: {fn.graph.name}.{node.name}: concatenated once and kept until a part changes "
                   "(while its layers are plain nn.Linear: a wrapped layer, e.g. by PEFT, is called instead)")
        return None
    if node.meta.get("weights_only"):
        # parameters alone (fuse-linear's weights): concatenated once, not on every call
        fn.mg.note(f"torch: {fn.graph.name}.{node.name}: concatenated once and kept until a part changes")
        return call(fn.mg.helper("cat_weights"), P.Name("self"), node.name, P.ListExpr(tuple(parts)),
                    dim=dim(ref, axis))
    return call("torch.cat", P.ListExpr(tuple(parts)), dim=dim(ref, axis))


@lowers("stack")
def _lower_stack(frame: Frame, node: Node, ins: list[Any]) -> Any:
    types = input_types(frame, node)
    ref = stack_reference(types)   # the same operand the shape rule aligned to
    shape = [frame.size(a.size) for a in ref.axes]
    return torch.stack([align_tensor(x, t, ref.names).expand(shape) for x, t in zip(ins, types, strict=True)])


@emits("stack")
def _emit_stack(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    """Operands aligned by name with the first of highest rank; one lacking an axis is expanded over it."""
    types = [fn.in_type(node, i) for i in range(len(ins))]
    ref = stack_reference(types)   # the same operand the shape rule aligned to
    parts = []
    for x, t in zip(ins, types, strict=True):
        y = align(x, t, ref.names, full=True)
        if any(n not in t.names for n in ref.names):
            y = method(y, "expand", *[Lit(-1) if a.name in t.names else fn.size(a.size) for a in ref.axes])
        parts.append(y)
    return call("torch.stack", P.ListExpr(tuple(parts)))


@lowers("slice")
def _lower_slice(frame: Frame, node: Node, ins: list[Any]) -> Any:
    a = node.attrs
    x = ins[0]
    i = axis_dim(frame, node)
    index = [slice(None)] * x.dim()
    index[i] = slice(a["start"], a["stop"], a["step"])
    return x[tuple(index)]


@emits("slice")
def _emit_slice(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    a = node.attrs
    i = fn.in_type(node, 0).index(a["axis"])
    part = Slice(Lit(a["start"]) if a["start"] else None, Lit(a["stop"]), Lit(a["step"]) if a["step"] != 1 else None)
    return P.Index(ins[0], (*[Slice()] * i, part))
