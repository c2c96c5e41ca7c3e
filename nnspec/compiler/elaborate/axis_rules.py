"""Rules that keep a spec from checking into a model its author did not mean, because names broadcast.

- An elementwise op broadcasts by name. When one operand carries every axis of the result (a bias `[d]` against
  `[B, T, d]`, a mask `[T, S]` against `[B, h, T, S]`), that is ordinary broadcasting. When no operand does (each
  has an axis the others lack: `x[B, T, d] + r[B, T, h]`), the result is an outer sum or product, almost always a
  mistake (an MLP of the wrong width) that would surface lines later. It is refused where it is written, unless
  the assignment's annotation names every axis of the result (`y[B, T, d, h] = x + r`): the author wrote the
  outer product down.
- A size-1 axis (`linear(x, 1)` leaves one) broadcasts against nothing of its name, so it travels silently until
  something fails; when it takes part in an error, a note says where it was made.
"""

from __future__ import annotations

import sympy

from nnspec.compiler.elaborate.tensor_types import show
from nnspec.compiler.ir import Graph, TensorType
from nnspec.errors import SpecError
from nnspec.spec.source import Span

SHAPE_CODES = frozenset({"E012", "E017", "E018", "E021"})   # errors about axes, which a stray size-1 axis can cause


def refuse_outer(graph: Graph, nodes: list[str], what: str, named: frozenset[str] | None, span: Span) -> None:
    """Refuse an elementwise op over `nodes` (its operands, scalars included) none of which carries every axis of
    the result, unless `named` (the axes an enclosing annotated assignment names) covers the result."""
    types = [graph[n].tensor_type for n in nodes]
    result: dict[str, None] = {}
    for t in types:
        result.update(dict.fromkeys(t.names))
    if any(set(t.names) == set(result) for t in types):
        return
    if named is not None and set(result) <= named:
        return
    parts = []
    for t in types:
        if t.rank:
            lacks = [n for n in result if n not in t.names]
            parts.append(f"{show(t)} lacks {', '.join(lacks)}")
    outer = ", ".join(result)
    err = SpecError("E012", f"{what}: each operand has an axis the other lacks ({'; '.join(parts)}), so the result "
                    f"would be the outer [{outer}]. If that is meant, name its axes: `y[{outer}] = ...`; otherwise "
                    "give the operands matching axes", span)
    raise note_size1(err, graph, nodes)


def note_size1(err: SpecError, graph: Graph, nodes: list[str]) -> SpecError:
    """Add, for each size-1 axis of these tensors, a note at the expression that made it."""
    if err.code not in SHAPE_CODES:
        return err
    seen: set[str] = set()
    for n in nodes:
        t = graph[n].type
        if not isinstance(t, TensorType):
            continue
        for a in t.axes:
            if a.name in seen or sympy.sympify(a.size) != 1:
                continue
            seen.add(a.name)
            born = birthplace(graph, n, a.name)
            if born is not None and born != err.span:
                err.with_note(f"axis '{a.name}' has size 1; it was made here and broadcasts silently until it "
                              f"meets an axis of another name (drop it with sum(..., over={a.name}))", born)
    return err


def birthplace(graph: Graph, node: str, axis: str) -> Span | None:
    """The span of the expression that made `axis` on `node`: follow inputs that already carry it back to the
    first node that does not take it from an input."""
    current = graph[node]
    while True:
        parent = next((i for i in current.inputs
                       if isinstance(graph[i].type, TensorType) and axis in graph[i].tensor_type.names), None)
        if parent is None:
            return current.span
        current = graph[parent]
