"""Indexing along named axes: top-k, sort, gather, scatter, cumsum, concat, stack, slice, clamp."""

from __future__ import annotations

import math
from typing import Any

import sympy

from nnspec.compiler.builtins.core import REQUIRED, bind, over_axis
from nnspec.compiler.elaborate import Surface, TensorValue, TupleValue, builtin
from nnspec.compiler.elaborate.tensor_types import show
from nnspec.compiler.ir import Axis, DType
from nnspec.compiler.static import fits_dtype
from nnspec.errors import SpecError
from nnspec.spec import ast


def _into(b: Surface, expr: ast.Expr | None, size: sympy.Expr) -> Axis:
    """The renamed axis: `into=NAME`, or named after its size."""
    if expr is not None:
        name = b.axis_name(expr)
        known = b.sizes.lookup(name)
        if known is not None and b.sizes.equal(known, size) is False:
            raise SpecError("E012", f"'{name}' is {b.sizes.describe(known)}, but this axis has size "
                            f"{b.sizes.describe(size)}", expr.span)
        return Axis(name, known if known is not None else size)
    return Axis(str(size), size)


def _tuple(b: Surface, node: TensorValue, n: int, span: Any) -> TupleValue:
    return TupleValue(tuple(b.emit("getitem", [node.node], {"index": i}, span) for i in range(n)))


@builtin("topk", "topk(x, k, over=last, into=NAME) -> (values, indices)", "The k largest along an axis.")
def _topk(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "topk", [("x", REQUIRED), ("k", REQUIRED), ("over", None), ("into", None)])
    x = b.tensor(a["x"])  # type: ignore[arg-type]
    over = over_axis(b, a["over"], x, "topk", call.span)
    k = b.ints(a["k"], 1, "k")[0]  # type: ignore[arg-type]
    size = b.type_of(x).axis(over).size  # type: ignore[union-attr]
    n = b.sizes.value(size)
    if k < 1 or (n is not None and k > n):
        raise SpecError("E012", f"topk: k={k} must be between 1 and the size of {over} "
                        f"({n if n is not None else size})", a["k"].span)  # type: ignore[union-attr]
    if n is None:  # torch refuses k beyond the axis at run time: say so as a guard
        _within(b, size, k, ">=", call.span)
    into = _into(b, a["into"], sympy.Integer(k))
    node = b.emit("topk", [x.node], {"axis": over, "k": k, "into": into}, call.span)
    return _tuple(b, node, 2, call.span)


@builtin("sort", "sort(x, over=last, descending=false) -> (values, indices)", "Sort along an axis.")
def _sort(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "sort", [("x", REQUIRED), ("over", None), ("descending", None)])
    x = b.tensor(a["x"])  # type: ignore[arg-type]
    over = over_axis(b, a["over"], x, "sort", call.span)
    desc = False if a["descending"] is None else b.flag(a["descending"], "descending")
    return _tuple(b, b.emit("sort", [x.node], {"axis": over, "descending": desc}, call.span), 2, call.span)


@builtin("gather", "gather(x, idx, over=AXIS)", "Pick entries along an axis by index.")
def _gather(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "gather", [("x", REQUIRED), ("idx", REQUIRED), ("over", REQUIRED)])
    x, idx = b.tensor(a["x"]), b.tensor(a["idx"])  # type: ignore[arg-type]
    over = over_axis(b, a["over"], x, "gather", call.span)
    return b.emit("gather", [x.node, idx.node], {"axis": over}, call.span)


@builtin("scatter", 'scatter(x, idx, src, over=AXIS, reduce="set")', "Write entries along an axis by index.")
def _scatter(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "scatter", [("x", REQUIRED), ("idx", REQUIRED), ("src", REQUIRED), ("over", REQUIRED),
                                  ("reduce", None)])
    x, idx, src = b.tensor(a["x"]), b.tensor(a["idx"]), b.tensor(a["src"])  # type: ignore[arg-type]
    over = over_axis(b, a["over"], x, "scatter", call.span)
    reduce = "set" if a["reduce"] is None else str(b.static(a["reduce"], "reduce"))
    return b.emit("scatter", [x.node, idx.node, src.node], {"axis": over, "reduce": reduce}, call.span)


@builtin("cumsum", "cumsum(x, over=last)", "Running sum along an axis.")
def _cumsum(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "cumsum", [("x", REQUIRED), ("over", None)])
    x = b.tensor(a["x"])  # type: ignore[arg-type]
    return b.emit("cumsum", [x.node], {"axis": over_axis(b, a["over"], x, "cumsum", call.span)}, call.span)


@builtin("concat", "concat(a, b, ..., over=AXIS | (AXIS, AXIS, ...), into=NAME)",
         "Join tensors along an axis (`over=(N, M)`: along axis N of a and M of b, of any lengths).")
def _concat(b: Surface, call: ast.Call) -> Any:
    kw = {k.name: k for k in call.kwargs}
    for name in kw:
        if name not in ("over", "into"):
            raise SpecError("E016", f"concat has no argument '{name}' (it takes tensors, over=, into=)", kw[name].span)
    if not call.args or "over" not in kw:
        raise SpecError("E019", "concat takes tensors and over=AXIS", call.span)
    xs = [b.tensor(e) for e in call.args]
    if isinstance(kw["over"].value, ast.Tuple):
        xs = _join_axes(b, xs, call, kw["over"].value)
    over = b.axis_name(kw["over"].value) if not isinstance(kw["over"].value, ast.Tuple) else \
        b.axis_name(kw["over"].value.items[0])
    if not any(over in b.type_of(x).names for x in xs):
        raise SpecError("E017", f"concat: no operand has axis '{over}'", kw["over"].value.span)
    total = sympy.Add(*[b.type_of(x).axis(over).size if over in b.type_of(x).names else sympy.Integer(1)
                        for x in xs])
    into = _into(b, kw["into"].value if "into" in kw else None, total)
    return b.emit("concat", [x.node for x in xs], {"axis": over, "into": into}, call.span)


MAX_STACK = 64


@builtin("stack", "stack(a, b, ..., into=NAME)",
         "Stack tensors along a new leading axis NAME of size the number of tensors.")
def _stack(b: Surface, call: ast.Call) -> Any:
    kw = {k.name: k for k in call.kwargs}
    for name in kw:
        if name != "into":
            raise SpecError("E016", f"stack has no argument '{name}' (it takes tensors and into=)", kw[name].span)
    if not call.args or "into" not in kw:
        raise SpecError("E019", "stack takes tensors and into=NAME, the new axis", call.span)
    if len(call.args) > MAX_STACK:
        raise SpecError("E019", f"stack takes at most {MAX_STACK} tensors, got {len(call.args)}", call.span)
    xs = [b.tensor(e) for e in call.args]
    into = _into(b, kw["into"].value, sympy.Integer(len(xs)))
    return b.emit("stack", [x.node for x in xs], {"into": into}, call.span)


def _join_axes(b: Surface, xs: list[TensorValue], call: ast.Call, over: ast.Tuple) -> list[TensorValue]:
    """`over=(N, M, ...)`: operand i joins along its own axis over[i]. Within a block an axis name has one size,
    so sequences of different lengths carry different names; each is relabelled to the first operand's name for
    the concat alone (the relabelled view is not recorded as the name's size)."""
    if len(over.items) != len(xs):
        raise SpecError("E019", f"concat: over= names {len(over.items)} axes for {len(xs)} tensors (one per tensor)",
                        over.span)
    names = [b.axis_name(e) for e in over.items]
    out = []
    for x, name, e in zip(xs, names, over.items, strict=True):
        t = b.type_of(x)
        if name not in t.names:
            raise SpecError("E017", f"concat: no axis '{name}' in {show(t)}", e.span)
        if name != names[0]:
            if names[0] in t.names:
                raise SpecError("E017", f"concat: {show(t)} already has an axis '{names[0]}'; it cannot join "
                                f"along '{name}'", e.span)
            axes = tuple(Axis(names[0], a.size) if a.name == name else a for a in t.axes)
            x = b.emit("rearrange", [x.node], {"perm": tuple(range(t.rank)), "axes": axes}, e.span, record=False)
        out.append(x)
    return out


@builtin("slice", "slice(x, over=AXIS, start=0, stop=size, step=1, into=NAME)", "A range along an axis.")
def _slice(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "slice", [("x", REQUIRED), ("over", REQUIRED), ("start", None), ("stop", None), ("step", None),
                                ("into", None)])
    x = b.tensor(a["x"])  # type: ignore[arg-type]
    over = over_axis(b, a["over"], x, "slice", call.span)
    n = b.sizes.value(b.type_of(x).axis(over).size)  # type: ignore[union-attr]
    start = 0 if a["start"] is None else b.ints(a["start"], 1, "start")[0]
    step = 1 if a["step"] is None else b.ints(a["step"], 1, "step")[0]
    if a["stop"] is None and n is None:
        raise SpecError("E026", f"slice: give stop=; the size of {over} is not known when checking", call.span)
    stop = n if a["stop"] is None else b.ints(a["stop"], 1, "stop")[0]
    assert stop is not None
    if step < 1 or start < 0 or stop < start or (n is not None and stop > n):  # before dividing by step
        raise SpecError("E012", f"slice {start}:{stop}:{step} does not fit axis {over}"
                        + (f" of size {n}" if n is not None else "") + " (start >= 0, stop >= start, step >= 1)",
                        call.span)
    if n is None:  # torch would clip the range to the axis and give fewer entries than checked
        _within(b, b.type_of(x).axis(over).size, stop, ">=", call.span)  # type: ignore[union-attr]
    size = sympy.Integer(max(0, -(-(stop - start) // step)))
    into = _into(b, a["into"], size)
    return b.emit("slice", [x.node], {"axis": over, "start": start, "stop": stop, "step": step, "into": into},
                  call.span)


@builtin("clamp", "clamp(x, min=none, max=none)", "Clamp into a range.")
def _clamp(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "clamp", [("x", REQUIRED), ("min", None), ("max", None)])
    x = b.tensor(a["x"])  # type: ignore[arg-type]
    dtype = b.type_of(x).dtype
    bounds: dict[str, int | float | None] = {}
    for key in ("min", "max"):
        expr = a[key]
        if expr is None:
            bounds[key] = None
            continue
        value: int | float = b.number(expr, key)
        if dtype.is_int:  # torch.clamp with a float bound turns an integer tensor into float32
            exact = b.static(expr, key)
            exact = b.sizes.concrete(exact) if isinstance(exact, sympy.Basic) else exact
            if isinstance(exact, bool) or not (isinstance(exact, int) or (isinstance(exact, sympy.Basic)
                                                                          and exact.is_Integer)):
                raise SpecError("E026", f"clamp of an integer tensor takes integer bounds, got {key}={value}",
                                expr.span)
            value = int(exact)
        if not fits_dtype(value, dtype):  # torch refuses a bound its dtype cannot hold
            raise SpecError("E023", f"clamp {key}={value} does not fit the {dtype.value} tensor it bounds", expr.span)
        bounds[key] = value
    return b.emit("clamp", [x.node], bounds, call.span)


@builtin("take", "take(x, over=AXIS, index=0)", "One position along an axis (the axis is removed).")
def _take(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "take", [("x", REQUIRED), ("over", REQUIRED), ("index", None)])
    x = b.tensor(a["x"])  # type: ignore[arg-type]
    over = over_axis(b, a["over"], x, "take", call.span)
    index = 0 if a["index"] is None else b.ints(a["index"], 1, "index")[0]
    size = b.type_of(x).axis(over).size  # type: ignore[union-attr]
    if index < 0:
        raise SpecError("E012", f"take: index {index} is negative; positions along {over} count from 0", call.span)
    if b.sizes.value(size) is None:
        _within(b, size, index, ">", call.span)
    return b.emit("select", [x.node], {"axis": over, "index": index}, call.span)


def _within(b: Surface, size: sympy.Expr, bound: int, op: str, span: Any) -> None:
    """An index or a range end along an axis whose size depends on a free dim: a run-time guard."""
    fact = sympy.Gt(size, bound) if op == ">" else sympy.Ge(size, bound)
    if fact is sympy.false:
        raise SpecError("E012", f"{size} {op} {bound} can never hold", span)
    if fact is not sympy.true:
        b.sizes.assume(fact, f"{size} {op} {bound}")


@builtin("full", 'full(value, AXIS, ..., dtype="float32")', "A constant tensor over named axes.")
def _full(b: Surface, call: ast.Call) -> Any:
    if len(call.args) < 1:
        raise SpecError("E019", "full takes a value and axis names: full(0.0, B, h, d)", call.span)
    value = b.number(call.args[0], "fill value")
    dtype = DType.float32
    for kw in call.kwargs:
        if kw.name != "dtype":
            raise SpecError("E016", f"full has no argument '{kw.name}' (dtype)", kw.span)
        name = b.axis_name(kw.value)
        if name not in DType.__members__:
            raise SpecError("E004", f"unknown dtype '{name}'", kw.value.span)
        dtype = DType(name)
    axes = tuple(b.axis(b.axis_name(e), e.span) for e in call.args[1:])
    fill: int | float | bool = value
    if dtype.is_int:
        fill = int(value) if math.isfinite(value) else value  # type: ignore[assignment]
    elif dtype == DType.bool:
        fill = bool(value)
    if not fits_dtype(fill, dtype):  # torch.full refuses it at run time
        raise SpecError("E023", f"fill value {value} does not fit {dtype}", call.args[0].span)
    return b.emit("full", [], {"axes": axes, "value": fill, "dtype": dtype}, call.span)


@builtin("zeros", "zeros(AXIS, ...)", "A float32 tensor of zeros over named axes.")
def _zeros(b: Surface, call: ast.Call) -> Any:
    if call.kwargs:
        raise SpecError("E016", "zeros takes only axis names", call.kwargs[0].span)
    axes = tuple(b.axis(b.axis_name(e), e.span) for e in call.args)
    return b.emit("full", [], {"axes": axes, "value": 0.0, "dtype": DType.float32}, call.span)
