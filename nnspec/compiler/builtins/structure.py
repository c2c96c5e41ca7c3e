"""Explicit parameters and the sequential scan (recurrences such as retention or state-space models)."""

from __future__ import annotations

import math
from typing import Any

from nnspec.compiler.builtins.core import INIT_STD, over_axis
from nnspec.compiler.elaborate import FuncRef, Surface, TupleValue, builtin
from nnspec.compiler.elaborate.tensor_types import show
from nnspec.compiler.ir import Axis, DType, TensorType
from nnspec.errors import SpecError
from nnspec.spec import ast

INITS = ("normal", "zeros", "ones")


@builtin("param", 'param(size, size, ..., init="normal", std=0.02, name=NAME)',
         "A learned tensor with the given axes (e.g. stacked expert weights); `param()` is a learned scalar; a "
         "size given twice (`param(d, d)`, square) names its second axis `d_1`.")
def _param(b: Surface, call: ast.Call) -> Any:
    init, std = "normal", INIT_STD
    for kw in call.kwargs:
        if kw.name == "init":
            init = str(b.static(kw.value, "init"))
            if init not in INITS:
                raise SpecError("E015", f"init must be one of {', '.join(INITS)}, got {init!r}", kw.value.span)
        elif kw.name == "std":
            std = b.number(kw.value, "std")
            if not math.isfinite(std) or std < 0:  # torch's normal_ refuses std < 0; inf makes every weight inf
                raise SpecError("E015", f"param std must be a finite number >= 0, got {std}", kw.value.span)
        elif kw.name != "name":
            raise SpecError("E016", f"param has no argument '{kw.name}' (init, std, name)", kw.span)
    axes = _distinct([b.size(e, "param size") for e in call.args])
    scope = b.claim_scope(b.scope_kwarg(call), "param", call.span)
    spec_init = ("normal", std) if init == "normal" else (init,)
    node = b.emit("param", [], {"path": scope, "type": TensorType(axes, DType.float32), "init": spec_init}, call.span,
                  hint=scope)
    b.params[scope] = node.node
    return node


def _distinct(axes: list[Axis]) -> tuple[Axis, ...]:
    """A tensor's axes have distinct names: a size named again (a square `param(d, d)`) is numbered as a repeated
    scope name is, `d_1`, `d_2`; relabel it to taste (`param(d, d)[d, e]`)."""
    out: list[Axis] = []
    for a in axes:
        name, n = a.name, 0
        while name in (x.name for x in out):
            n += 1
            name = f"{a.name}_{n}"
        out.append(Axis(name, a.size))
    return tuple(out)


@builtin("scan", "scan(step, init, xs..., over=AXIS, name=step) -> (final state, outputs)",
         "Apply a block along an axis, carrying a state.")
def _scan(b: Surface, call: ast.Call) -> Any:
    if len(call.args) < 3:
        raise SpecError("E019", "scan takes a block, an initial state and sequences: scan(step, s0, x, over=T)",
                        call.span)
    ref = b.eval(call.args[0])
    if not isinstance(ref, FuncRef) or ref.name not in b.blocks:
        raise SpecError("E016", "scan's first argument must be a block of this spec", call.args[0].span)
    over_expr = next((k.value for k in call.kwargs if k.name == "over"), None)
    for k in call.kwargs:
        if k.name not in ("over", "name"):
            raise SpecError("E016", f"scan has no argument '{k.name}' (over, name)", k.span)
    if over_expr is None:
        raise SpecError("E019", "scan needs over=AXIS, the axis to step along", call.span)
    state = b.tensor(call.args[1])
    xs = [b.tensor(e) for e in call.args[2:]]
    over = over_axis(b, over_expr, xs[0], "scan", call.span)
    axis = b.type_of(xs[0]).axis(over)
    assert axis is not None
    steps = []
    for x, e in zip(xs, call.args[2:], strict=True):
        t = b.type_of(x)
        if over not in t.names:
            raise SpecError("E017", f"scan: sequence has no axis '{over}'", e.span)
        steps.append(TensorType(tuple(a for a in t.axes if a.name != over), t.dtype))
    decl = b.blocks[ref.name]
    params = decl.signature.params
    if len(params) != 1 + len(xs):
        raise SpecError("E019", f"scan: block '{ref.name}' must take the state and {len(xs)} slice"
                        f"{'s' if len(xs) != 1 else ''}, it takes {len(params)} arguments", call.span)
    state_t = b.type_of(state)
    bound = [(params[0].name, state_t)] + [(p.name, t) for p, t in zip(params[1:], steps, strict=True)]
    template = b.template(decl, bound, call.span)
    if template.meta.get("captures"):   # its inputs after the state are sequences, sliced along `over`
        raise SpecError("E026", f"scan: block '{ref.name}' reads the model input "
                        f"'{template.meta['captures'][0]}'; a scan's step sees only its state and the slices "
                        "it is given", call.span)
    result = template.output_type()
    new_state, y = result if isinstance(result, tuple) and len(result) == 2 else (result, result)
    if new_state != state_t:
        raise SpecError("E025", f"scan: block '{ref.name}' takes state {show(state_t)} but returns "
                        f"{show(new_state)}", call.span)
    assert isinstance(y, TensorType)
    position = min(b.type_of(xs[0]).index(over), y.rank)
    ys = TensorType(y.axes[:position] + (axis,) + y.axes[position:], y.dtype)
    scope = b.claim_scope(b.scope_kwarg(call), ref.name, call.span)
    node = b.emit("scan", [state.node, *[x.node for x in xs]],
                  {"block": template.name, "scope": scope, "axis": axis, "position": position,
                   "params": (state_t, *steps), "result": (state_t, ys)}, call.span, hint=scope)
    return TupleValue(tuple(b.emit("getitem", [node.node], {"index": i}, call.span) for i in range(2)))
