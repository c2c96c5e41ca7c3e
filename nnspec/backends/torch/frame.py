"""What an op's lowering sees while the reference interpreter runs one graph (`Frame`), and the error a run
raises for inputs that do not match the spec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import sympy

from nnspec.backends.torch.lazy import nn, torch
from nnspec.compiler.ir import Graph, Model


class RuntimeShapeError(ValueError):
    """An input does not match the spec's declared type, or a run-time guard fails."""


class Runner(Protocol):
    """What a frame needs of the interpreter running it: the model, and a way to run a block's graph."""

    model: Model

    def run_graph(self, graph: Graph, module: nn.Module, args: list[Any],
                  sizes: dict[sympy.Symbol, sympy.Integer]) -> list[Any]: ...


@dataclass
class Frame:
    """What a lowering sees while one graph runs."""

    interp: Runner
    graph: Graph
    module: nn.Module
    args: list[Any]
    sizes: dict[sympy.Symbol, sympy.Integer]
    device: torch.device | str

    def size(self, expr: sympy.Expr) -> int:
        value = sympy.sympify(expr).xreplace(self.sizes)
        if not value.is_Integer:
            raise RuntimeShapeError(f"size {expr} is not known at run time (got {value})")
        return int(value)

    def run_block(self, name: str, module: nn.Module, args: list[Any]) -> list[Any]:
        return self.interp.run_graph(self.interp.model.templates[name], module, args, self.sizes)
