"""The spec language's built-in functions. Each reads its arguments, makes parameters and emits the
graph ops defined in `compiler/ops/` (where each op's meaning lives)."""

from __future__ import annotations

import difflib
import math
from typing import Any

import sympy

from nnspec.compiler.elaborate import BUILTINS, MAX_REPEAT, FuncRef, Surface, TensorValue, TupleValue, builtin
from nnspec.compiler.elaborate.tensor_types import show
from nnspec.compiler.ir import Axis, DType
from nnspec.compiler.ops.elementwise import UNARY
from nnspec.compiler.static import STATIC_FUNCS, static_call
from nnspec.errors import SpecError
from nnspec.spec import ast
from nnspec.spec.load import BlockDecl

REQUIRED: Any = object()
INIT_STD = 0.02  # GPT-2/BERT/Llama's initializer_range


def bind(call: ast.Call, fname: str, params: list[tuple[str, Any]], varargs: bool = False
         ) -> tuple[dict[str, ast.Expr | None], list[ast.Expr]]:
    """Match a call's arguments to `params` [(name, default)], REQUIRED marking required ones."""
    names = [n for n, _ in params]
    out: dict[str, ast.Expr | None] = {}
    positional = list(call.args)
    rest: list[ast.Expr] = []
    if len(positional) > len(params):
        if not varargs:
            raise SpecError("E019", f"{fname} takes at most {len(params)} positional arguments "
                            f"({', '.join(names)}), got {len(positional)}", call.span)
        rest = positional[len(params):]
        positional = positional[:len(params)]
    for (name, _), expr in zip(params, positional, strict=False):  # fewer positional than params is fine
        out[name] = expr
    for kw in call.kwargs:
        if kw.name not in names:
            hint = difflib.get_close_matches(kw.name, names, n=1)
            raise SpecError("E016", f"{fname} has no argument '{kw.name}'" +
                            (f"; did you mean '{hint[0]}'?" if hint else f" (its arguments: {', '.join(names)})"),
                            kw.span)
        if kw.name in out:
            raise SpecError("E019", f"{fname}: argument '{kw.name}' given twice", kw.span)
        out[kw.name] = kw.value
    for name, default in params:
        if name not in out:
            if default is REQUIRED:
                raise SpecError("E019", f"{fname} needs argument '{name}'", call.span)
            out[name] = None
    return out, rest


def over_axis(b: Surface, expr: ast.Expr | None, x: TensorValue, fname: str, span: Any) -> str:
    t = b.type_of(x)
    if expr is None:
        if not t.axes:
            raise SpecError("E017", f"{fname} needs an axis, but its input is a scalar", span)
        return t.axes[-1].name
    name = b.axis_name(expr)
    if name not in t.names:
        hint = difflib.get_close_matches(name, list(t.names), n=1)
        raise SpecError("E017", f"{fname}: no axis '{name}' in {show(t)}" +
                        (f"; did you mean '{hint[0]}'?" if hint else ""), expr.span)
    return name


# ---- learned maps ----
@builtin("linear", "linear(x, out, bias=true, over=last, std=0.02, name=linear)",
         "Affine map over one axis; the weight starts normal with standard deviation `std`.")
def _linear(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "linear", [("x", REQUIRED), ("out", REQUIRED), ("bias", None), ("over", None), ("std", None),
                                 ("name", None)])
    x = b.tensor(a["x"])
    out = b.size(a["out"], "linear output size")
    over = over_axis(b, a["over"], x, "linear", call.span)
    has_bias = True if a["bias"] is None else b.flag(a["bias"], "bias")
    std = INIT_STD if a["std"] is None else b.number(a["std"], "std")
    if not math.isfinite(std) or std < 0:   # e.g. GPT-2's residual projections: 0.02 / sqrt(2 * n_layer)
        raise SpecError("E015", f"linear std must be a finite number >= 0, got {std}", a["std"].span)
    in_axis = b.type_of(x).axis(over)
    assert in_axis is not None
    scope = b.claim_scope(b.scope_kwarg(call), "linear", call.span)
    # a square map keeps its axis name; the weight still needs two distinct axis names
    w_axes = (out, Axis(f"{in_axis.name}_in", in_axis.size)) if out.name == in_axis.name else (out, in_axis)
    w = b.param(scope, "weight", w_axes, ("normal", std), call.span)
    inputs = [x.node, w.node]
    if has_bias:
        inputs.append(b.param(scope, "bias", (out,), ("zeros",), call.span).node)
    return b.emit("linear", inputs, {"axis": over}, call.span, hint=scope)


@builtin("embedding", "embedding(ids, num, dim, padding_idx=none, name=embedding)",
         "Lookup table of `num` rows of size `dim`; row `padding_idx` gets no gradient.")
def _embedding(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "embedding", [("ids", REQUIRED), ("num", REQUIRED), ("dim", REQUIRED), ("padding_idx", None),
                                    ("name", None)])
    ids = b.tensor(a["ids"])
    num = b.size(a["num"], "embedding rows")  # type: ignore[arg-type]
    dim = b.size(a["dim"], "embedding size")  # type: ignore[arg-type]
    if not b.type_of(ids).dtype.is_int:
        raise SpecError("E013", f"embedding indices must be an integer tensor, got {show(b.type_of(ids))}",
                        call.span)
    scope = b.claim_scope(b.scope_kwarg(call), "embedding", call.span)
    w = b.param(scope, "weight", (num, dim), ("normal", INIT_STD), call.span)
    attrs = {} if a["padding_idx"] is None else {"padding_idx": b.ints(a["padding_idx"], 1, "padding_idx")[0]}
    return b.emit("embedding", [ids.node, w.node], attrs, call.span, hint=scope)


def _norm(kind: str, default_eps: float) -> Any:
    def fn(b: Surface, call: ast.Call) -> Any:
        params = [("x", REQUIRED), ("eps", None), ("over", None), ("name", None)]
        if kind == "layernorm":
            params.insert(3, ("bias", None))
        a, _ = bind(call, kind, params)
        x = b.tensor(a["x"])
        eps = default_eps if a["eps"] is None else b.number(a["eps"], "eps")
        over = over_axis(b, a["over"], x, kind, call.span)
        axis = b.type_of(x).axis(over)
        assert axis is not None
        scope = b.claim_scope(b.scope_kwarg(call), kind, call.span)
        inputs = [x.node, b.param(scope, "weight", (axis,), ("ones",), call.span).node]
        if kind == "layernorm":
            if a.get("bias") is not None and not b.flag(a["bias"], "bias"):
                raise SpecError("E016", "layernorm without bias is not supported yet", a["bias"].span)
            inputs.append(b.param(scope, "bias", (axis,), ("zeros",), call.span).node)
        return b.emit(kind, inputs, {"axis": over, "eps": eps}, call.span, hint=scope)
    return fn


builtin("layernorm", "layernorm(x, eps=1e-5, over=last, name=layernorm)", "Layer normalisation.")(
    _norm("layernorm", 1e-5))
builtin("rmsnorm", "rmsnorm(x, eps=1e-6, over=last, name=rmsnorm)", "RMS normalisation.")(_norm("rmsnorm", 1e-6))


# ---- elementwise ----
def _unary(name: str) -> Any:
    def fn(b: Surface, call: ast.Call) -> Any:
        a, _ = bind(call, name, [("x", REQUIRED)])
        v = b.eval(a["x"])  # type: ignore[arg-type]
        if not isinstance(v, TensorValue):
            if name in STATIC_FUNCS:   # also a function of check-time numbers
                return static_call(name, [b.static(a["x"], name)], call.span,  # type: ignore[arg-type]
                                   b.sizes.concrete)
            raise SpecError("E026", f"{name} applies to a tensor, got {v!r}", call.span)
        return b.emit(name, [v.node], {}, call.span)
    return fn


for _name in UNARY:
    if UNARY[_name].infix is None:   # `-x` and `not x` are written as operators, not called
        builtin(_name, f"{_name}(x)", UNARY[_name].formula)(_unary(_name))


@builtin("int", "int(x)", "A number known when the spec is checked, truncated to an integer: how a float option "
         "becomes a size (`linear(x, int(mlp_ratio * d))`). A tensor is converted with `cast`.")
def _int(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "int", [("x", REQUIRED)])
    v = b.eval(a["x"])  # type: ignore[arg-type]
    if isinstance(v, TensorValue):
        raise SpecError("E026", "int(x) converts a number known when the spec is checked; convert a tensor with "
                        "cast(x, int64)", call.span)
    return static_call("int", [b.static(a["x"], "int")], call.span, b.sizes.concrete)  # type: ignore[arg-type]


@builtin("where", "where(cond, a, b)", "`a` where `cond`, else `b`.")
def _where(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "where", [("cond", REQUIRED), ("a", REQUIRED), ("b", REQUIRED)])
    values = [b.eval(a[k]) for k in ("cond", "a", "b")]  # type: ignore[arg-type]
    if not any(isinstance(v, TensorValue) for v in values):
        raise SpecError("E026", "where needs at least one tensor", call.span)
    return b.elementwise("where", values, call.span)


@builtin("dropout", "dropout(x, p)", "Random zeroing while training.")
def _dropout(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "dropout", [("x", REQUIRED), ("p", REQUIRED)])
    x = b.tensor(a["x"])  # type: ignore[arg-type]
    return b.emit("dropout", [x.node], {"p": b.number(a["p"], "dropout p")}, call.span)  # type: ignore[arg-type]


@builtin("drop_path", "drop_path(x, p, over=AXIS)",
         "Stochastic depth: while training, zero each sample (index along `over`) whole with probability p.")
def _drop_path(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "drop_path", [("x", REQUIRED), ("p", REQUIRED), ("over", REQUIRED)])
    x = b.tensor(a["x"])  # type: ignore[arg-type]
    over = over_axis(b, a["over"], x, "drop_path", call.span)
    return b.emit("drop_path", [x.node], {"p": b.number(a["p"], "drop_path p"), "axis": over},  # type: ignore[arg-type]
                  call.span)


@builtin("straight_through", "straight_through(x, y)",
         "The value of y with the gradient of x (a straight-through estimator: `x + (y - x)` detached).")
def _straight_through(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "straight_through", [("x", REQUIRED), ("y", REQUIRED)])
    x = b.tensor(a["x"])  # type: ignore[arg-type]  # gradients flow to x: a tensor, never a number
    return b.elementwise("straight_through", [x, b.eval(a["y"])], call.span)  # type: ignore[arg-type]


# ---- along an axis ----
@builtin("softmax", "softmax(x, over=last)", "Normalised exponentials along an axis.")
def _softmax(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "softmax", [("x", REQUIRED), ("over", None)])
    x = b.tensor(a["x"])  # type: ignore[arg-type]
    return b.emit("softmax", [x.node], {"axis": over_axis(b, a["over"], x, "softmax", call.span)}, call.span)


def _reduction(name: str, op: str) -> Any:
    def fn(b: Surface, call: ast.Call) -> Any:
        a, _ = bind(call, name, [("x", REQUIRED), ("over", None)])
        x = b.tensor(a["x"])  # type: ignore[arg-type]
        return b.emit(op, [x.node], {"axis": over_axis(b, a["over"], x, name, call.span)}, call.span)
    return fn


builtin("sum", "sum(x, over=last)", "Sum along an axis.")(_reduction("sum", "sum"))
builtin("mean", "mean(x, over=last)", "Mean along an axis.")(_reduction("mean", "mean"))


def _extremum(name: str) -> Any:
    def fn(b: Surface, call: ast.Call) -> Any:
        if len(call.args) >= 2:
            values = [b.eval(e) for e in call.args]
            if call.kwargs:
                raise SpecError("E016", f"{name}(a, b, ...) takes no keyword arguments", call.kwargs[0].span)
            if not any(isinstance(v, TensorValue) for v in values):
                return static_call(name, [b.static(e, name) for e in call.args], call.span, b.sizes.concrete)
            out = values[0]
            for v in values[1:]:
                out = b.elementwise("maximum" if name == "max" else "minimum", [out, v], call.span)
            return out
        a, _ = bind(call, name, [("x", REQUIRED), ("over", None)])
        x = b.tensor(a["x"])  # type: ignore[arg-type]
        return b.emit("amax" if name == "max" else "amin", [x.node],
                      {"axis": over_axis(b, a["over"], x, name, call.span)}, call.span)
    return fn


builtin("max", "max(x, over=last) | max(a, b, ...)", "Maximum along an axis, or elementwise.")(_extremum("max"))
builtin("min", "min(x, over=last) | min(a, b, ...)", "Minimum along an axis, or elementwise.")(_extremum("min"))


# ---- shape ----
MAX_SPLIT = 64


@builtin("split", "split(x, over=AXIS)", "Unpack an axis of literal size k into k tensors.")
def _split(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "split", [("x", REQUIRED), ("over", REQUIRED)])
    x = b.tensor(a["x"])  # type: ignore[arg-type]
    over = over_axis(b, a["over"], x, "split", call.span)
    axis = b.type_of(x).axis(over)
    assert axis is not None
    n = b.sizes.value(axis.size)
    if n is None or n > MAX_SPLIT:
        raise SpecError("E012", f"split needs an axis of known size at most {MAX_SPLIT}; {over} has size "
                        f"{b.sizes.describe(axis.size)}", call.span)
    return TupleValue(tuple(b.emit("select", [x.node], {"axis": over, "index": i}, call.span) for i in range(n)))


@builtin("arange", "arange(AXIS)", "0, 1, ... along an axis.")
def _arange(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "arange", [("axis", REQUIRED)])
    name = b.axis_name(a["axis"])  # type: ignore[arg-type]
    return b.emit("arange", [], {"axis": b.axis(name, a["axis"].span)}, call.span)  # type: ignore[union-attr]


@builtin("causal_mask", "causal_mask(Q, K)", "bool[Q, K]: key index <= query index.")
def _causal_mask(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "causal_mask", [("q", REQUIRED), ("k", REQUIRED)])
    q = b.axis(b.axis_name(a["q"]), a["q"].span)  # type: ignore[arg-type, union-attr]
    k = b.axis(b.axis_name(a["k"]), a["k"].span)  # type: ignore[arg-type, union-attr]
    return b.emit("causal_mask", [], {"q": q, "k": k}, call.span)


@builtin("cast", 'cast(x, "dtype")', "Convert dtype.")
def _cast(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "cast", [("x", REQUIRED), ("dtype", REQUIRED)])
    x = b.tensor(a["x"])  # type: ignore[arg-type]
    name = b.axis_name(a["dtype"])  # type: ignore[arg-type]
    if name not in DType.__members__ and name != "float":
        raise SpecError("E004", f"unknown dtype '{name}'", a["dtype"].span)  # type: ignore[union-attr]
    return b.emit("cast", [x.node], {"dtype": DType.float32 if name == "float" else DType(name)}, call.span)


@builtin("matmul", "matmul(a, b, over=AXIS)", "Contract one named axis shared by a and b.")
def _matmul(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "matmul", [("a", REQUIRED), ("b", REQUIRED), ("over", None)])
    x, y = b.tensor(a["a"]), b.tensor(a["b"])  # type: ignore[arg-type]
    if a["over"] is None:
        return b.matmul(x, y, call.span)
    over = over_axis(b, a["over"], x, "matmul", call.span)
    if over not in b.type_of(y).names:
        raise SpecError("E017", f"matmul: no axis '{over}' in the second operand {show(b.type_of(y))}",
                        a["over"].span)
    out = tuple(dict.fromkeys(n for n in (*b.type_of(x).names, *b.type_of(y).names) if n != over))
    return b.emit("einsum", [x.node, y.node], {"out": out}, call.span)


# ---- structure ----
@builtin("repeat", "repeat(N, block, x, ..., name=block, shared=false, index=NAME)",
         "Apply a block N times, feeding its output back in; `(x, y, ...)` carries a tuple state; `index=i` gives "
         "the block's parameter `i` the iteration's number.")
def _repeat(b: Surface, call: ast.Call) -> Any:
    if len(call.args) < 3:
        raise SpecError("E019", "repeat takes a count, a block and its input: repeat(n_layer, layer, x)", call.span)
    count_expr, block_expr, state_expr = call.args[0], call.args[1], call.args[2]
    count = b.sizes.concrete(b.static(count_expr, "repeat count"))
    if not isinstance(count, sympy.Basic) or not count.is_Integer or not 0 <= int(count) <= MAX_REPEAT:
        raise SpecError("E023", f"repeat count must be an integer from 0 to {MAX_REPEAT}, got {count}",
                        count_expr.span)
    ref = b.eval(block_expr)
    if isinstance(ref, str) and ref in b.blocks:
        ref = FuncRef(ref)
    if not isinstance(ref, FuncRef) or ref.name not in b.blocks:
        raise SpecError("E016", "repeat's second argument must be a block of this spec", block_expr.span)
    decl = b.blocks[ref.name]
    shared, index = False, None
    kwargs = []
    for kw in call.kwargs:
        if kw.name == "shared":
            shared = b.flag(kw.value, "shared")
        elif kw.name == "index":
            index = _index_param(b, decl, call, kw)
        else:
            kwargs.append(kw)
    if index is not None and shared:
        raise SpecError("E015", "repeat: index= gives each iteration its own template, so its iterations need "
                        "their own weights (shared=false)", call.span)
    # a tuple state `(h, e)` is the block's first k arguments, and its result must be that tuple again
    state = list(state_expr.items) if isinstance(state_expr, ast.Tuple) else [state_expr]
    inner = ast.Call(block_expr, [*state, *call.args[3:]], kwargs, span=call.span)
    if index is not None and (index in [p.name for p in decl.signature.params[:len(inner.args)]]
                              or any(k.name == index for k in kwargs)):
        raise SpecError("E019", f"repeat: '{index}' takes the iteration number; do not pass it too", call.span)
    tensors, templates, to_caller = b.block_binding(decl, inner, index, int(count) if index else 1)
    template = templates[0]
    scope = b.claim_scope(b.scope_kwarg(call), ref.name, call.span)
    params = tuple(b.graph[t].type for t in tensors)
    carried: Any = tuple(params[:len(state)]) if isinstance(state_expr, ast.Tuple) else \
        params[0] if params else None
    for k, t in enumerate(templates):
        result = t.output_type()
        if carried is None or result != carried:
            want = show(carried) if carried is not None else "no tensor"
            at = f" (iteration {k})" if k else ""
            raise SpecError("E025", f"repeat feeds block '{ref.name}' its own output, but it takes {want} and "
                            f"returns {show(result)}{at}", call.span)
    attrs: dict[str, Any] = {"block": template.name, "scope": scope, "count": int(count), "shared": shared,
                             "params": params, "result": carried}
    variants = tuple((k, t.name) for k, t in enumerate(templates) if t is not template)
    if variants:
        attrs["variants"] = variants
    if isinstance(carried, tuple):
        node = b.emit("repeat", tensors, attrs, call.span, hint=scope)
        return TupleValue(tuple(b.in_caller_terms("getitem", [node.node], {"index": i}, call.span, to_caller,
                                                  None) for i in range(len(carried))))
    return b.in_caller_terms("repeat", tensors, attrs, call.span, to_caller, scope)


def _index_param(b: Surface, decl: BlockDecl, call: ast.Call, kw: ast.Kwarg) -> str:
    """The block parameter named by `index=i`: a value parameter the call leaves for the iteration number."""
    name = b.axis_name(kw.value)
    params = decl.signature.params
    found = next((p for p in params if p.name == name), None)
    if found is None:
        raise SpecError("E016", f"repeat: block '{decl.signature.name}' has no parameter '{name}' to take the "
                        f"iteration number (declare it: {decl.signature.name}(..., {name}))", kw.value.span)
    if found.axes is not None or params.index(found) == 0:
        raise SpecError("E026", f"repeat: index parameter '{name}' of block '{decl.signature.name}' must be a "
                        "value parameter after the state, not a tensor", kw.value.span)
    return name


def builtin_names() -> list[str]:
    return sorted(BUILTINS)
