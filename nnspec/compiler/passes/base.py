"""What every pass shares: the context it runs in, the `explain` log, and small pattern helpers.

A pass is a frozen dataclass with a `name` and `apply(ctx, graph) -> (graph, changed)`. It rewrites the
graph in place (the pipeline hands it a copy owned by the optimised model) and says whether it changed
anything, so running a pipeline twice is seen to change nothing the second time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from nnspec.compiler.ir import Graph, Model, Node, TensorType, Type
from nnspec.compiler.ops import OPS
from nnspec.spec.source import Span


def where(node: Node | None) -> str:
    """`gpt2.yaml:33:5`, the place in the spec a node was written, or '' when it has none."""
    span: Span | None = node.span if node is not None else None
    return f"{span.source.name}:{span.line}:{span.col}" if span is not None else ""


@dataclass
class Explain:
    """Human-readable lines: each rewrite, each fusion group formed, each fusion refused and why."""

    sink: Callable[[str], None] | None = None
    lines: list[str] = field(default_factory=list)

    def _emit(self, kind: str, pass_name: str, graph: Graph, node: Node | None, message: str) -> None:
        at = where(node)
        line = f"{at + ': ' if at else ''}{kind} [{pass_name}] {graph.name}: {message}"
        self.lines.append(line)
        if self.sink is not None:
            self.sink(line)

    def rewrite(self, pass_name: str, graph: Graph, node: Node | None, message: str) -> None:
        self._emit("rewrite", pass_name, graph, node, message)

    def group(self, pass_name: str, graph: Graph, node: Node | None, message: str) -> None:
        self._emit("group", pass_name, graph, node, message)

    def refuse(self, pass_name: str, graph: Graph, node: Node | None, message: str) -> None:
        self._emit("refused", pass_name, graph, node, message)


@dataclass
class Context:
    """What a pass may read besides its graph. `training`: keep training-mode semantics (see attention)."""

    model: Model
    explain: Explain
    training: bool = False

    @property
    def sizes(self) -> Any:
        return self.model.dims

    def infer(self, op: str, inputs: list[Type], attrs: dict[str, Any]) -> Type:
        """The type `op` gives these inputs, without leaving run-time guards behind."""
        pending = len(self.sizes.pending)
        try:
            return OPS[op].infer(inputs, attrs, self.sizes)
        finally:
            del self.sizes.pending[pending:]


class Pass(Protocol):
    name: str

    def apply(self, ctx: Context, graph: Graph) -> tuple[Graph, bool]: ...


class Refusal(Exception):
    """A pattern matched far enough to be worth explaining, then failed for the stated reason."""


# ---- pattern helpers ----
def const_value(graph: Graph, name: str) -> int | float | bool | None:
    """The value of a scalar `const` node, or None."""
    node = graph[name]
    return node.attrs["value"] if node.op == "const" else None


def positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def sole_user(graph: Graph, name: str) -> Node | None:
    """The one node that reads `name` (once), when `name` is not also a graph output."""
    users = graph.users(name)
    if len(users) != 1 or name in graph.outputs or users[0].inputs.count(name) != 1:
        return None
    return users[0]


def tensor_type(graph: Graph, name: str) -> TensorType:
    t = graph[name].type
    assert isinstance(t, TensorType)
    return t


def same_axes(a: TensorType, b: TensorType) -> bool:
    """Same axis names (any order) with the same sizes."""
    return sorted(a.names) == sorted(b.names) and all(b.axis(x.name) == x for x in a.axes)


def users_text(users: list[Node]) -> str:
    return ", ".join(u.name for u in users) or "nothing"
