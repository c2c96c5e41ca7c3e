"""The reduce ops' torch rules: each op's reference lowering beside its code emitter."""

from __future__ import annotations

from typing import Any

from nnspec.backends.torch.frame import Frame
from nnspec.backends.torch.function import FunctionGen
from nnspec.backends.torch.layout import dim, input_types
from nnspec.backends.torch.lazy import torch
from nnspec.backends.torch.pysrc import Expr, call, method
from nnspec.backends.torch.rules import emits, lowers
from nnspec.compiler.ir import Node


@lowers("softmax")
def _lower_softmax(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return torch.softmax(ins[0], dim=input_types(frame, node)[0].index(node.attrs["axis"]))


@emits("softmax")
def _emit_softmax(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return call("F.softmax", ins[0], dim=dim(fn.in_type(node, 0), node.attrs["axis"]))


@lowers("sum", "mean", "amax", "amin")
def _lower_reduce(frame: Frame, node: Node, ins: list[Any]) -> Any:
    fn = {"sum": torch.sum, "mean": torch.mean, "amax": torch.amax, "amin": torch.amin}[node.op]
    return fn(ins[0], dim=input_types(frame, node)[0].index(node.attrs["axis"]))


@emits("sum", "mean", "amax", "amin")
def _emit_reduce(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return method(ins[0], node.op, dim=dim(fn.in_type(node, 0), node.attrs["axis"]))
