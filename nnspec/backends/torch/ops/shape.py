"""The shape ops' torch rules: each op's reference lowering beside its code emitter."""

from __future__ import annotations

from typing import Any

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.dtypes import TORCH_DTYPES
from nnspec.backends.torch.frame import Frame
from nnspec.backends.torch.function import FunctionGen
from nnspec.backends.torch.layout import input_types, permute
from nnspec.backends.torch.lazy import torch
from nnspec.backends.torch.pysrc import Expr, Lit, Slice, call, method
from nnspec.backends.torch.rules import emits, lowers
from nnspec.compiler.ir import DType, Node


@lowers("rearrange")
def _lower_rearrange(frame: Frame, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    perm = node.attrs["perm"]
    if tuple(perm) != tuple(range(len(perm))):
        x = x.permute(perm)
    return x.reshape([frame.size(a.size) for a in node.attrs["axes"]])


@emits("rearrange")
def _emit_rearrange(fn: FunctionGen, node: Node, ins: list[Expr]) -> None:
    """A statement of its own (never inlined) with the shape it makes as a comment, as nanoGPT writes its views."""
    fn.define(node, _rearranged(fn, node, ins), pinned=True)


def _rearranged(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    t = fn.in_type(node, 0)
    perm, axes = node.attrs["perm"], node.attrs["axes"]
    y = permute(ins[0], perm)
    moved = [t.axes[p] for p in perm]
    sizes = fn.mg.model.dims
    if len(moved) == len(axes) and all(sizes.equal(m.size, a.size) is True for m, a in zip(moved, axes,
                                                                                          strict=True)):
        return y     # a relabel (no code) or a pure permute
    return method(y, "reshape", *[fn.size(a.size) for a in axes])


@lowers("select")
def _lower_select(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return ins[0].select(input_types(frame, node)[0].index(node.attrs["axis"]), node.attrs["index"])


@emits("select")
def _emit_select(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    i = fn.in_type(node, 0).index(node.attrs["axis"])
    return P.Index(ins[0], (*[Slice()] * i, Lit(node.attrs["index"])))


@lowers("arange")
def _lower_arange(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return torch.arange(frame.size(node.attrs["axis"].size), device=frame.device)


@emits("arange")
def _emit_arange(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return call("torch.arange", fn.size(node.attrs["axis"].size), **fn.device_kw())


@lowers("causal_mask")
def _lower_causal_mask(frame: Frame, node: Node, ins: list[Any]) -> Any:
    q, k = frame.size(node.attrs["q"].size), frame.size(node.attrs["k"].size)
    return torch.ones(q, k, dtype=torch.bool, device=frame.device).tril()


@emits("causal_mask")
def _emit_causal_mask(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    q, k = fn.size(node.attrs["q"].size), fn.size(node.attrs["k"].size)
    return method(call("torch.ones", q, k, dtype=fn.dtype(DType.bool), **fn.device_kw()), "tril")


@lowers("full")
def _lower_full(frame: Frame, node: Node, ins: list[Any]) -> Any:
    shape = [frame.size(a.size) for a in node.attrs["axes"]]
    return torch.full(shape, node.attrs["value"], dtype=TORCH_DTYPES[node.attrs["dtype"]], device=frame.device)


@emits("full")
def _emit_full(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    shape = P.TupleExpr(tuple(fn.size(a.size) for a in node.attrs["axes"]))
    return call("torch.full", shape, P.lit(node.attrs["value"]), dtype=fn.dtype(node.attrs["dtype"]), **fn.device_kw())
