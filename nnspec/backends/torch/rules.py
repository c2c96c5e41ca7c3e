"""The torch backend's two op tables, keyed by op: `LOWERINGS` (the reference interpreter: how to compute the op
on tensors) and `EMITTERS` (code generation: the Python expression computing it). The family files in `ops/`
register both rules of an op side by side; `nnspec.backends.torch.ops` imports them all.

A lowering gets the frame, the node and its input values and returns the value. An emitter gets the function
being generated, the node and its inputs as expressions and returns the expression of its value (or `None`
after writing its own statements); it computes exactly what the op's lowering computes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nnspec.backends.torch.frame import Frame
from nnspec.backends.torch.function import FunctionGen
from nnspec.backends.torch.pysrc import Expr
from nnspec.compiler.ir import Node

Lowering = Callable[[Frame, Node, list[Any]], Any]
Emitter = Callable[[FunctionGen, Node, list[Expr]], Expr | None]

LOWERINGS: dict[str, Lowering] = {}
EMITTERS: dict[str, Emitter] = {}


def lowers(*ops: str) -> Callable[[Lowering], Lowering]:
    def register(fn: Lowering) -> Lowering:
        for op in ops:
            LOWERINGS[op] = fn
        return fn
    return register


def emits(*ops: str) -> Callable[[Emitter], Emitter]:
    def register(fn: Emitter) -> Emitter:
        for op in ops:
            EMITTERS[op] = fn
        return fn
    return register
