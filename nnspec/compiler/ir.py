"""The typed graph IR: tensors with named axes, nodes, graphs (networkx underneath) and the model.

A `Graph` is a function body: a block template or the model's body. Nodes are kept in insertion
order, which is always a topological order; edges (in a networkx MultiDiGraph) carry the tensor type
flowing along them. Block calls and repeats refer to other graphs by name, so a block is checked once
per distinct binding however often it is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import networkx as nx
import sympy

from nnspec.spec.source import Span


class DType(str, Enum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"
    int64 = "int64"
    int32 = "int32"
    bool = "bool"

    @property
    def is_float(self) -> bool:
        return self in (DType.float32, DType.float16, DType.bfloat16)

    @property
    def is_int(self) -> bool:
        return self in (DType.int64, DType.int32)

    def __str__(self) -> str:
        return self.value


DTYPE_ALIASES = {"float": DType.float32, **{d.value: d for d in DType}}


@dataclass(frozen=True)
class Axis:
    """One named axis. `size` is a sympy expression over dim symbols (free dims stay symbolic)."""

    name: str
    size: sympy.Expr

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class TensorType:
    axes: tuple[Axis, ...]
    dtype: DType

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.axes)

    @property
    def sizes(self) -> tuple[sympy.Expr, ...]:
        return tuple(a.size for a in self.axes)

    @property
    def rank(self) -> int:
        return len(self.axes)

    def axis(self, name: str) -> Axis | None:
        return next((a for a in self.axes if a.name == name), None)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def numel(self) -> sympy.Expr:
        return sympy.Mul(*self.sizes) if self.axes else sympy.Integer(1)

    def with_dtype(self, dtype: DType) -> TensorType:
        return TensorType(self.axes, dtype)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(a.name for a in self.axes)}]"

    def shape_str(self) -> str:
        return " x ".join(_size_str(a.size) for a in self.axes) or "scalar"


def _size_str(size: sympy.Expr) -> str:
    return str(size).replace("**", "^")


Type = TensorType | tuple[TensorType, ...]


@dataclass(eq=False)
class Node:
    name: str
    op: str
    inputs: list[str]
    attrs: dict[str, Any]
    type: Type
    span: Span | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def tensor_type(self) -> TensorType:
        assert isinstance(self.type, TensorType), f"{self.name} has a tuple type"
        return self.type


class Graph:
    """A block template or the model body: an ordered set of nodes over a networkx MultiDiGraph."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: dict[str, Node] = {}
        self.nx = nx.MultiDiGraph()
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self._counts: dict[str, int] = {}
        self.meta: dict[str, Any] = {}

    def fresh_name(self, hint: str) -> str:
        n = self._counts.get(hint, 0)
        self._counts[hint] = n + 1
        name = hint if n == 0 else f"{hint}_{n}"
        while name in self.nodes:
            n += 1
            self._counts[hint] = n + 1
            name = f"{hint}_{n}"
        return name

    def add(self, op: str, inputs: list[str], attrs: dict[str, Any], type_: Type,
            span: Span | None = None, hint: str | None = None) -> Node:
        node = Node(self.fresh_name(hint or op), op, list(inputs), dict(attrs), type_, span)
        self.nodes[node.name] = node
        self.nx.add_node(node.name)
        for i, src in enumerate(node.inputs):
            self.nx.add_edge(src, node.name, key=i, index=i, type=self.nodes[src].type)
        if op == "input":
            self.inputs.append(node.name)
        return node

    def rename(self, old: str, new: str) -> None:
        """Give a just-made node (no users yet) a readable name, e.g. the variable it is assigned to."""
        node = self.nodes[old]
        assert not list(self.nx.successors(old)), "only a node without users can be renamed"
        self.nodes = {(new if k == old else k): v for k, v in self.nodes.items()}
        nx.relabel_nodes(self.nx, {old: new}, copy=False)
        node.name = new
        self.inputs = [new if i == old else i for i in self.inputs]

    def __iter__(self) -> Any:
        return iter(self.nodes.values())

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def users(self, name: str) -> list[Node]:
        return [self.nodes[d] for d in dict.fromkeys(self.nx.successors(name))]

    def input_types(self, node: Node) -> list[Type]:
        return [self.nodes[i].type for i in node.inputs]

    def output_type(self) -> Type:
        types = tuple(self.nodes[o].type for o in self.outputs)
        return types[0] if len(types) == 1 else types  # type: ignore[return-value]


@dataclass
class Guard:
    """A constraint that depends on free dims: checked when the model runs."""

    expr: sympy.Basic
    text: str
    span: Span | None


@dataclass
class Model:
    """A checked spec: the body graph, block templates, dims and the facts shown by `nnspec check`."""

    name: str
    graph: Graph
    templates: dict[str, Graph]
    dims: Any  # compiler.sizes.Sizes
    options: dict[str, Any]
    inputs: dict[str, str]    # spec input name -> node name in `graph`
    outputs: dict[str, str]   # spec output name -> node name in `graph`
    guards: list[Guard]
    source_name: str
    # source ("hf") -> [(our path pattern, their key pattern, transforms)]; `{i}` placeholders match indices
    weight_maps: dict[str, list[tuple[str, str, tuple[str, ...]]]] = field(default_factory=dict)

    def graphs(self) -> list[Graph]:
        return [self.graph, *self.templates.values()]
