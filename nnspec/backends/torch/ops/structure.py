"""The structure ops' torch rules: each op's reference lowering beside its code emitter."""

from __future__ import annotations

from typing import Any

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.dtypes import TORCH_DTYPES
from nnspec.backends.torch.frame import Frame
from nnspec.backends.torch.function import FunctionGen
from nnspec.backends.torch.layout import input_types
from nnspec.backends.torch.lazy import torch
from nnspec.backends.torch.ops.elementwise import takes_number
from nnspec.backends.torch.pysrc import Expr, Lit, call, method
from nnspec.backends.torch.rules import emits, lowers
from nnspec.backends.torch.source import Stmt, Var
from nnspec.compiler.affine_scan import affine_state, direct_coefficients
from nnspec.compiler.ir import DType, Node, repeat_plan


@lowers("input")
def _lower_input(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return frame.args[frame.graph.inputs.index(node.name)]


@lowers("param")
def _lower_param(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return frame.module.get_parameter(node.attrs["path"])


@lowers("buffer")
def _lower_buffer(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return frame.module.get_buffer(node.attrs["path"])


@emits("param", "buffer")
def _emit_param(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return fn.member(node.attrs["path"])


@lowers("const")
def _lower_const(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return torch.tensor(node.attrs["value"], dtype=TORCH_DTYPES[node.tensor_type.dtype], device=frame.device)


@emits("const")
def _emit_const(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    """A Python number where every use is an operator that takes one beside a tensor; else a 0-dim tensor."""
    t = node.tensor_type
    v = node.attrs["value"]
    value = bool(v) if t.dtype == DType.bool else float(v) if t.dtype.is_float else int(v)
    users = fn.users(node.name)
    number = bool(users) and node.name not in fn.graph.outputs and t.dtype in (DType.float32, DType.int64,
                                                                               DType.bool) and all(
        takes_number(u, node.name)
        and any(fn.graph[i].op != "const" for i in u.inputs) for u in users)
    if number:
        return P.lit(value)
    return call("torch.tensor", P.lit(value), dtype=fn.dtype(t.dtype), **fn.device_kw())


@lowers("call")
def _lower_call(frame: Frame, node: Node, ins: list[Any]) -> Any:
    out = frame.run_block(node.attrs["block"], frame.module.get_submodule(node.attrs["scope"]), ins)
    return out[0] if len(out) == 1 else tuple(out)


@emits("call")
def _emit_call(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return P.Call(fn.member(node.attrs["scope"]), tuple(ins))


@lowers("repeat")
def _lower_repeat(frame: Frame, node: Node, ins: list[Any]) -> Any:
    result = node.attrs["result"]
    k = len(result) if isinstance(result, tuple) else 1   # the carried state: the first k arguments
    state, rest = list(ins[:k]), ins[k:]
    scope = frame.module.get_submodule(node.attrs["scope"])
    for block, sub in repeat_plan(node.attrs):  # the iteration's block and weight set (see ir.repeat_plan)
        state = list(frame.run_block(block, scope.get_submodule(sub) if sub else scope, [*state, *rest]))[:k]
    return tuple(state) if isinstance(result, tuple) else state[0]


@emits("repeat")
def _emit_repeat(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr | None:
    """`for layer in self.h: x = layer(x)` (`h, e = layer(h, e)` for a tuple state); with shared weights
    `for _ in range(N): x = self.h(x)`. Iterations running different templates (`variants`) are a list of
    instances of their classes, so the loop is the same."""
    a = node.attrs
    n = node.name
    result = a["result"]
    if isinstance(result, tuple):
        named = {u.attrs["index"]: u.name for u in fn.users(n) if u.op == "getitem"}
        refs = [fn.let(ins[i], named.get(i, f"state{i}")) for i in range(len(result))]
        carried: list[Expr] = [Var(r.node) for r in refs]
        rest = ins[len(result):]
    else:
        fn.add(Stmt([(0, (Var(n), " = ", ins[0]))], n, pinned=True, inline_into=False))
        refs, carried, rest = [], [Var(n)], ins[1:]
    target: Expr = P.TupleExpr(tuple(carried), bare=True) if len(carried) > 1 else carried[0]
    scope = fn.member(a["scope"])
    if a["shared"]:
        head: tuple[str | Expr, ...] = ("for _ in range(", Lit(a["count"]), "):")
        step = P.Call(scope, (*carried, *rest))
    else:
        layer = P.Name(fn.fresh(fn.mg.model.templates[a["block"]].meta.get("block", "layer")))
        head = ("for ", layer, " in ", scope, ":")
        step = P.Call(layer, (*carried, *rest))
    fn.add(Stmt([(0, head), (1, (target, " = ", step))], inline_into=False, evaluates=[n]))
    return P.TupleExpr(tuple(refs)) if isinstance(result, tuple) else None


@lowers("getitem")
def _lower_getitem(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return ins[0][node.attrs["index"]]


@emits("getitem")
def _emit_getitem(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    if isinstance(ins[0], P.TupleExpr):
        return ins[0].items[node.attrs["index"]]
    return P.Index(ins[0], (Lit(node.attrs["index"]),))


@lowers("scan")
def _lower_scan(frame: Frame, node: Node, ins: list[Any]) -> Any:
    state, xs = ins[0], ins[1:]
    axis = node.attrs["axis"].name
    dims = [t.index(axis) for t in input_types(frame, node)[1:]]
    module = frame.module.get_submodule(node.attrs["scope"])
    outs = []
    for i in range(xs[0].shape[dims[0]]):
        result = frame.run_block(node.attrs["block"], module, [state, *[x.select(d, i) for x, d in
                                                                         zip(xs, dims, strict=True)]])
        state, y = (result[0], result[1]) if len(result) == 2 else (result[0], result[0])
        outs.append(y)
    return (state, torch.stack(outs, dim=node.attrs["position"]))


@emits("scan")
def _emit_scan(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    """A recurrence over axis `axis`: a Python loop over its positions, as the reference runs it; with
    `parallel_scan`, a step that is a linear recurrence in its state runs all positions at once (`affine_scan`)."""
    a = node.attrs
    types = [fn.in_type(node, i) for i in range(len(ins))]
    dims = [t.index(a["axis"].name) for t in types[1:]]
    named = {u.attrs["index"]: u.name for u in fn.users(node.name) if u.op == "getitem"}
    step = fn.mg.model.templates[a["block"]]
    if fn.mg.options.parallel_scan and affine_state(step):   # a linear recurrence: every step at once
        direct = direct_coefficients(step)   # a and b read from the scanned tensors, not found through the step
        extra = {} if direct is None else {"direct": P.TupleExpr(P.ints(direct))}
        refs = fn.let_many(call(fn.mg.helper("affine_scan"), fn.member(a["scope"]), ins[0], P.TupleExpr(tuple(
            ins[1:])), P.TupleExpr(P.ints(dims)), a["position"], len(step.outputs) == 2, **extra),
            [named.get(0, "_state"), named.get(1, "_stacked")])   # `_`: unused (a dummy name to linters)
        return P.TupleExpr(tuple(refs))
    state = fn.let(ins[0], named.get(0, "state"))
    outs = fn.let(P.ListExpr(()), "outs")
    i, y = P.Name(fn.fresh("i")), P.Name(fn.fresh("y"))
    length = P.Index(P.Attr(ins[1], "shape"), (Lit(dims[0]),))
    step = P.Call(fn.member(a["scope"]), (Var(state.node), *[method(x, "select", d, i)
                                                             for x, d in zip(ins[1:], dims, strict=True)]))
    pair = len(fn.mg.model.templates[a["block"]].outputs) == 2
    body: list[tuple[int, tuple[str | Expr, ...]]] = [(0, ("for ", i, " in range(", length, "):"))]
    if pair:
        body.append((1, (P.TupleExpr((Var(state.node), y), bare=True), " = ", step)))
    else:
        body += [(1, (Var(state.node), " = ", step)), (1, (y, " = ", Var(state.node)))]
    body.append((1, (method(Var(outs.node), "append", y),)))
    fn.add(Stmt(body, inline_into=False, evaluates=[node.name]))
    return P.TupleExpr((state, fn.let(call("torch.stack", outs, dim=a["position"]), named.get(1, "stacked"))))
