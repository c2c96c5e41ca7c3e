"""Closed-form facts about a checked model: parameters and FLOPs, per node and in total.

FLOP convention (also in docs/language.md): a multiply-add is 2 FLOPs; elementwise ops count the per-element
cost their op declares; FLOPs are symbolic in the free dims (batch, sequence) with every declared dim
substituted. Repeats multiply their block's counts; nothing is unrolled.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import sympy

from nnspec.compiler.ir import Graph, Model, Node, TensorType
from nnspec.compiler.ops import OPS


@dataclass(frozen=True)
class ParamInfo:
    path: str
    type: TensorType


class Analysis:
    def __init__(self, model: Model) -> None:
        self.model = model
        self.sizes = model.dims
        self.graph_params = cache(self._graph_params)
        self.graph_flops = cache(self._graph_flops)

    def _graph_params(self, name: str) -> int:
        return sum(self.node_params(n) for n in self._graph(name))

    def _graph(self, name: str) -> Graph:
        return self.model.graph if name == self.model.graph.name and name not in self.model.templates \
            else self.model.templates[name]

    def node_params(self, node: Node) -> int:
        if node.op == "param":
            return int(self.sizes.concrete(node.attrs["type"].numel()))
        if node.op == "call":
            return self.graph_params(node.attrs["block"])
        if node.op == "repeat":
            n = 1 if node.attrs["shared"] else node.attrs["count"]
            return n * self.graph_params(node.attrs["block"])
        return 0

    def _graph_flops(self, name: str) -> sympy.Expr:
        return sympy.expand(sum((self.node_flops(n, self._graph(name)) for n in self._graph(name)),
                                sympy.Integer(0)))

    def node_flops(self, node: Node, graph: Graph) -> sympy.Expr:
        if node.op == "call":
            return self.graph_flops(node.attrs["block"])
        if node.op == "repeat":
            return node.attrs["count"] * self.graph_flops(node.attrs["block"])
        ins = graph.input_types(node)
        return self.sizes.concrete(OPS[node.op].flops(ins, node.type, node.attrs))

    def total_params(self) -> int:
        return sum(self.node_params(n) for n in self.model.graph)

    def total_flops(self) -> sympy.Expr:
        return sympy.expand(sum((self.node_flops(n, self.model.graph) for n in self.model.graph),
                                sympy.Integer(0)))

    def parameters(self) -> list[ParamInfo]:
        """Every parameter with its full path (repeats listed per layer), in definition order."""
        out: list[ParamInfo] = []
        self._collect(self.model.graph, "", out)
        return out

    def _collect(self, graph: Graph, prefix: str, out: list[ParamInfo]) -> None:
        for node in graph:
            if node.op == "param":
                out.append(ParamInfo(prefix + node.attrs["path"], node.attrs["type"]))
            elif node.op == "call":
                self._collect(self._graph(node.attrs["block"]), f"{prefix}{node.attrs['scope']}.", out)
            elif node.op == "repeat":
                if node.attrs["shared"]:
                    self._collect(self._graph(node.attrs["block"]), f"{prefix}{node.attrs['scope']}.", out)
                else:
                    for i in range(node.attrs["count"]):
                        self._collect(self._graph(node.attrs["block"]), f"{prefix}{node.attrs['scope']}.{i}.", out)
