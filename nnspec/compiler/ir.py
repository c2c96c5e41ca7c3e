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

    def size_str(self) -> str:
        """The size as text (`n_embd`, `T^2`); a merged axis, named by its factors in the order written
        (`n_head*head_dim` for `(n_head head_dim)`), prints as named: sympy sorts factors, and the written order
        is the memory layout (the first factor is the outer one)."""
        factors = self.name.split("*")
        if len(factors) > 1:
            symbols = {s.name: s for s in self.size.free_symbols}
            values = [sympy.Integer(f) if f.isdigit() else symbols.get(f) for f in factors]
            if all(v is not None for v in values) and sympy.Mul(*values) == self.size:
                return self.name
        return _size_str(self.size)


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
        return " x ".join(a.size_str() for a in self.axes) or "scalar"


def _size_str(size: sympy.Expr) -> str:
    return str(size).replace("**", "^")


Type = TensorType | tuple[TensorType, ...]


# The op table (`nnspec.compiler.ops.OPS`, filled as op definitions register): held here so a node can answer
# questions about its op without the IR importing the op definitions, which import the IR.
OP_TABLE: dict[str, Any] = {}


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

    def is_impure(self) -> bool:
        """Whether running it does more than compute its result from its inputs (see `ops.registry.Effect`): such
        a node is never merged with an equal one or reordered."""
        return OP_TABLE[self.op].is_impure


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

    # ---- rewriting (compiler passes); the caller keeps the node order topological and `verify` checks it ----
    def clone(self) -> Graph:
        """An independent copy: nodes, edges, meta and fusion groups (types, attrs and spans are shared values)."""
        out = Graph(self.name)
        for node in self:
            out.nodes[node.name] = Node(node.name, node.op, list(node.inputs), dict(node.attrs), node.type,
                                        node.span, dict(node.meta))
        out.nx = self.nx.copy()
        out.inputs, out.outputs, out._counts = list(self.inputs), list(self.outputs), dict(self._counts)
        out.meta = dict(self.meta)
        if "fusion_groups" in self.meta:
            out.meta["fusion_groups"] = {n: g.copy() for n, g in self.meta["fusion_groups"].items()}
        return out

    def insert_before(self, anchor: str | None, op: str, inputs: list[str], attrs: dict[str, Any], type_: Type,
                      span: Span | None = None, hint: str | None = None) -> Node:
        """Add a node (never an `input`) just before `anchor`, or at the end when anchor is None."""
        assert op != "input", "graph inputs are a template's signature; passes do not add them"
        node = self.add(op, inputs, attrs, type_, span, hint)
        if anchor is not None:
            self.move_before([node.name], anchor)
        return node

    def move_before(self, names: list[str], anchor: str | None) -> None:
        """Move `names`, in the order given, to just before `anchor` (None: to the end)."""
        moving = set(names)
        assert anchor not in moving, "cannot move a node before itself"
        rest = [n for n in self.nodes if n not in moving]
        if anchor is None:
            order = rest + list(names)
        else:
            i = rest.index(anchor)
            order = rest[:i] + list(names) + rest[i:]
        self.nodes = {n: self.nodes[n] for n in order}

    def reorder(self, order: list[str]) -> None:
        """Put the nodes in `order`, a permutation of them."""
        assert sorted(order) == sorted(self.nodes), "reorder needs every node exactly once"
        self.nodes = {n: self.nodes[n] for n in order}

    def set_input(self, name: str, index: int, src: str) -> None:
        """Make input `index` of node `name` read `src`."""
        node = self.nodes[name]
        self.nx.remove_edge(node.inputs[index], name, key=index)
        node.inputs[index] = src
        self.nx.add_edge(src, name, key=index, index=index, type=self.nodes[src].type)

    def replace_uses(self, old: str, new: str) -> int:
        """Every use of `old`, by a node or as a graph output, now reads `new`; returns how many changed."""
        count = 0
        for user in self.users(old):
            for i, src in enumerate(user.inputs):
                if src == old:
                    self.set_input(user.name, i, new)
                    count += 1
        for i, out in enumerate(self.outputs):
            if out == old:
                self.outputs[i] = new
                count += 1
        return count

    def relabel(self, old: str, new: str) -> None:
        """Rename a node (which may have users) to a name not in use; its users and the outputs follow."""
        assert new not in self.nodes, f"{new} is already a node"
        for user in self.users(old):
            user.inputs = [new if i == old else i for i in user.inputs]
        self.outputs = [new if o == old else o for o in self.outputs]
        self.inputs = [new if i == old else i for i in self.inputs]
        self.nodes = {(new if k == old else k): v for k, v in self.nodes.items()}
        nx.relabel_nodes(self.nx, {old: new}, copy=False)
        self.nodes[new].name = new

    def erase(self, name: str) -> None:
        """Remove a node that nothing uses (not an output, not a graph input)."""
        assert not list(self.nx.successors(name)), f"cannot erase {name}: it still has users"
        assert name not in self.outputs and name not in self.inputs, f"cannot erase {name}: graph input or output"
        del self.nodes[name]
        self.nx.remove_node(name)


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
    # transforms applied to the checked spec, in order, as one line each (`lora *.c_attn r=8`); see
    # nnspec.compiler.transforms. Nodes a transform made or changed also carry `meta["transform"]`.
    transforms: list[str] = field(default_factory=list)

    def graphs(self) -> list[Graph]:
        return [self.graph, *self.templates.values()]


def repeat_plan(attrs: dict[str, Any]) -> list[tuple[str, str]]:
    """(block, weight scope under the repeat's scope) for each iteration of a `repeat` node, in order.

    The block is `block`, or the iteration's entry in the optional `variants` ((index, block) pairs, made by
    transforms such as drop). The weight scope is `""` when `shared`, `str(i // (count // groups))` with the
    optional `groups` (consecutive iterations share one set), else `str(i)`.
    """
    count, variants = attrs["count"], dict(attrs.get("variants", ()))
    groups = attrs.get("groups")
    per = count // groups if groups else 1
    return [(variants.get(i, attrs["block"]),
             "" if attrs["shared"] else str(i // per) if groups else str(i)) for i in range(count)]


def repeat_counts(attrs: dict[str, Any], *, weights: bool) -> dict[str, int]:
    """Block -> how many iterations of a `repeat` run it (`weights=False`) or how many weight sets it has
    (`weights=True`), in closed form unless the repeat has variants."""
    count, block, variants = attrs["count"], attrs["block"], dict(attrs.get("variants", ()))
    if not weights:
        out = {block: count - len(variants)}
        for b in variants.values():
            out[b] = out.get(b, 0) + 1
        return {b: n for b, n in out.items() if n}
    if attrs["shared"]:
        return {block: 1}
    if not variants:
        return {block: attrs.get("groups") or count}
    out = {}
    for _, b in repeat_weight_sets(attrs):
        out[b] = out.get(b, 0) + 1
    return out


def repeat_weight_sets(attrs: dict[str, Any]) -> list[tuple[str, str]]:
    """The distinct weight sets of a `repeat`: (weight scope, block of the first iteration using it)."""
    out: dict[str, str] = {}
    for block, scope in repeat_plan(attrs):
        out.setdefault(scope, block)
    if attrs["shared"] and not out:  # a shared repeat has its one set even at count 0, as counted and generated
        out[""] = attrs["block"]
    return [(scope, block) for scope, block in out.items()]



@dataclass
class FusionGroup:
    """Nodes a backend should emit as one kernel: an annotation, never a change to what the graph computes.

    `kind` is `elementwise` (a chain of elementwise ops over one domain), `epilogue` (a linear and the
    elementwise ops applied to its result: bias + activation) or `add_norm` (a residual add and the norm of
    its sum). `inputs` are the values read from outside the group, `outputs` the members whose values are
    used outside it or returned; both in graph order. Members carry `meta["fusion_group"] = name` and stand
    contiguously in the graph's node order, so a backend can emit the group where its first member is.
    """

    name: str
    kind: str
    nodes: list[str]
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def copy(self) -> FusionGroup:
        return FusionGroup(self.name, self.kind, list(self.nodes), list(self.inputs), list(self.outputs))
