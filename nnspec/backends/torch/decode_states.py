"""The decoding step's recurrent states in the generated file (`decode_codegen`): a scan over the sequence and a
causal convolution's window, each carried from one step to the next in a `ScanState` taken off the step's `cache`
list in run order (the derivation's `State`s, `nnspec.compiler.decode`).

- a scan starts from the kept state (the spec's initial state when the step starts at position 0:
  `torch.where(cache_position[0] == 0, initial, kept)`), runs the forward's recurrence (its emitter at this level)
  over the new tokens, and copies its final state back;
- a window (`concat(prefix, x)` before a causal conv) puts the kept last K-1 inputs (the prefix at position 0)
  before the new ones, and keeps the last K-1 positions of the result for the next step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.function import FunctionGen
from nnspec.backends.torch.pysrc import Expr, Lit, call, method
from nnspec.backends.torch.source import Stmt
from nnspec.compiler.decode import DecodePlan, Site
from nnspec.compiler.ir import Node, TensorType

Emitter = Callable[..., Expr | None] | None


def windows_of(plan: DecodePlan) -> set[tuple[str, str]]:
    """(graph, concat) of each causal convolution's window the plan keeps."""
    return {(s.graph, s.node) for s in plan.states if s.kind == "window"}


def _start(gen: Any, node: Node, initial: Expr, hint: str, comment: str) -> tuple[Expr, Expr]:
    """(the kept ScanState, what the step starts from: the spec's initial value at position 0, else the kept)."""
    kept = gen.let(method(P.Name(gen.cache_name), "pop", 0), hint, comment=comment)
    first = P.binop("==", P.Index(P.Name(gen.position_name), (Lit(0),)), Lit(0))
    return kept, call("torch.where", first, initial, P.Attr(kept, "state"))


def emit_scan(gen: FunctionGen, node: Node, ins: list[Expr], emit: Emitter) -> Expr:
    """The forward's recurrence over the new tokens from the kept state, its final state copied back."""
    t = gen.in_type(node, 0)
    kept, start = _start(gen, node, ins[0], "carried", "this scan's state (" + ", ".join(t.names) + "), kept "
                         "between steps")
    assert emit is not None
    result = emit(gen, node, [start, *ins[1:]])
    assert isinstance(result, P.TupleExpr)
    gen.add(Stmt([(0, (method(P.Attr(kept, "state"), "copy_", result.items[0]),))], evaluates=[]))
    return result


def emit_window(gen: FunctionGen, node: Node, ins: list[Expr], emit: Emitter, values: dict[Any, int]) -> Expr:
    """The kept last K-1 inputs, then the new ones (the concat's emitter); the last K-1 positions kept. The
    prefix's axes are in the concatenation's order (`decode_codegen` checks before emitting a step)."""
    t = gen.in_type(node, 0)
    axis, into = node.attrs["axis"], node.attrs["into"].name
    names = [axis if n == into else n for n in node.tensor_type.names]
    width = int(sympy.sympify(t.axis(axis).size).xreplace(values))  # type: ignore[union-attr]
    kept, start = _start(gen, node, ins[0], "window", f"this convolution's last {width} inputs ("
                         + ", ".join(t.names) + "), kept between steps")
    assert emit is not None
    value = emit(gen, node, [start, *ins[1:]])
    assert value is not None
    joined = gen.let(value, node.name)
    tail = P.Index(joined, (*[P.Slice()] * names.index(axis), P.Slice(Lit(-width))))
    gen.add(Stmt([(0, (method(P.Attr(kept, "state"), "copy_", tail),))], evaluates=[]))
    return joined


def mixed_cache(plan: DecodePlan, stored: Callable[[Site], tuple[TensorType, TensorType]],
                size: Callable[[Any, bool], Expr]) -> tuple[str, list[str], list[str]]:
    """The Decoder's cache of a model with states: a KVCache or ScanState per entry of the plan's run order,
    each distinct shape a variable and the layers' repeating pattern a loop: (comment, shape lines, lines)."""
    shapes: dict[str, str] = {}   # shape source -> variable
    calls: list[str] = []
    for entry in plan.order:
        if isinstance(entry, Site):
            pair = []
            for t, kind in zip(stored(entry), ("k_shape", "v_shape"), strict=True):
                src = P.src(P.TupleExpr(tuple(size(a, a.name == entry.key) for a in t.axes)))
                pair.append(shapes.setdefault(src, f"{kind}_{len(shapes) + 1}"))
            calls.append(f"KVCache({pair[0]}, {pair[1]}, torch.{entry.k_type.dtype.value}, device)")
        else:
            src = P.src(P.TupleExpr(tuple(size(a, False) for a in entry.type.axes)))
            name = shapes.setdefault(src, f"{'window' if entry.kind == 'window' else 'state'}_{len(shapes) + 1}")
            calls.append(f"ScanState({name}, torch.{entry.type.dtype.value}, device)")
    shape_lines = [f"        {name} = {src}" for src, name in shapes.items()]
    period = next(p for p in range(1, len(calls) + 1) if len(calls) % p == 0 and calls == calls[:p] * (len(calls) // p))
    body = P.ListExpr(tuple(P.Name(c) for c in calls[:period]))
    if len(calls) // period > 1:
        made = ["        cache: list[nn.Module] = []",
                f"        for _ in range({len(calls) // period}):   # the same entries for each layer",
                *P.statement("            ", "cache += ", body)]
    else:
        made = [*P.statement("        ", "cache: list[nn.Module] = ", body)]
    made.append("        self.cache = nn.ModuleList(cache)")
    comment = "each causal attention's KVCache, each scan's and causal conv's ScanState, in the order a step runs them"
    return comment, shape_lines, made


__all__ = ["emit_scan", "emit_window", "mixed_cache", "windows_of"]
