"""PyTorch code generation, one emitter per graph op: `EMITTERS[op](fn, node, ins) -> expression`.

An emitter gets the node and its inputs as expressions and returns the expression of its value (or `None`
after writing its own statements). Each computes exactly what the op's lowering in `lowering.py` (the
reference interpreter) computes; named axes become positional dims at compile time: the permutes,
`None`-indexing and dim numbers below are worked out from the IR types, never at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.codegen import Stmt, Var, spec_named
from nnspec.backends.torch.lowering import BINARY_TORCH, TORCH_DTYPES
from nnspec.backends.torch.pysrc import Expr, Lit, Slice, call, method
from nnspec.compiler.ir import DType, Node, TensorType
from nnspec.compiler.ops.contract import einsum_string
from nnspec.compiler.ops.index import concat_reference

if TYPE_CHECKING:
    from nnspec.backends.torch.codegen import FunctionGen

Emitter = Callable[["FunctionGen", Node, list[Expr]], Expr | None]
EMITTERS: dict[str, Emitter] = {}

EFFECTFUL = frozenset({"dropout", "batchnorm"})   # draw random numbers or update state: never reordered
PINNED = frozenset({"rearrange"})                 # kept as their own statement, with a shape comment
NEG_INF = P.lit(float("-inf"))


def emits(*ops: str) -> Callable[[Emitter], Emitter]:
    def register(fn: Emitter) -> Emitter:
        for op in ops:
            EMITTERS[op] = fn
        return fn
    return register


# ---- positional helpers, computed from the IR types ----
def dim(t: TensorType, name: str) -> int:
    """The positional dim of axis `name`; -1 for the last, as people write it."""
    i = t.index(name)
    return -1 if i == t.rank - 1 else i


def permute(x: Expr, perm: list[int] | tuple[int, ...]) -> Expr:
    perm = list(perm)
    moved = [i for i, p in enumerate(perm) if p != i]
    if not moved:
        return x
    if len(moved) == 2:
        return method(x, "transpose", *moved)
    return method(x, "permute", *perm)


def align(x: Expr, t: TensorType, names: tuple[str, ...], full: bool = False) -> Expr:
    """`x` (axes `t.names`) viewed with axes in the order of `names`, size 1 where it has none; leading
    missing axes are left to broadcasting unless `full`. Same values as `lowering.align`."""
    if t.rank == 0 and not full:
        return x
    present = [n for n in names if n in t.names]
    x = permute(x, [t.index(n) for n in present])
    start = 0 if full or not present else names.index(present[0])
    items: list[Expr] = [Slice() if n in t.names else Lit(None) for n in names[start:]]
    while items and items[-1] == Slice():
        items.pop()
    return P.Index(x, tuple(items)) if items else x


def on_last(x: Expr, t: TensorType, axis: str, fn: Callable[[Expr], Expr]) -> Expr:
    """Apply `fn` (which works on the last dim, as torch's linear and norms do) along `axis`."""
    i = t.index(axis)
    if i == t.rank - 1:
        return fn(x)
    return method(fn(method(x, "movedim", i, -1)), "movedim", -1, i)


def cast_to(fn: FunctionGen, x: Expr, got: torch.dtype, want: DType) -> Expr:
    return x if got == TORCH_DTYPES[want] else method(x, "to", fn.dtype(want))


def _dummy(e: Expr, t: TensorType) -> Any:
    """A stand-in with the dtype behaviour of an operand (a Python literal or a tensor of that rank)."""
    if isinstance(e, Lit) and not isinstance(e.value, str):
        return type(e.value)(1)
    return torch.ones((1,) * t.rank, dtype=TORCH_DTYPES[t.dtype])


# ---- elementwise ----
UNARY: dict[str, Callable[[Expr], Expr]] = {
    "neg": lambda x: P.Unary("-", x),
    "abs": lambda x: call("torch.abs", x),
    "relu": lambda x: call("F.relu", x),
    "gelu": lambda x: call("F.gelu", x),
    "gelu_tanh": lambda x: call("F.gelu", x, approximate="tanh"),
    "silu": lambda x: call("F.silu", x),
    "sigmoid": lambda x: call("torch.sigmoid", x),
    "tanh": lambda x: call("torch.tanh", x),
    "exp": lambda x: call("torch.exp", x),
    "log": lambda x: call("torch.log", x),
    "sqrt": lambda x: call("torch.sqrt", x),
    "rsqrt": lambda x: call("torch.rsqrt", x),
    "logical_not": lambda x: P.Unary("~", x),
}

OPERATORS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "floordiv": "//", "mod": "%", "pow": "**",
             "eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "logical_and": "&",
             "logical_or": "|"}
FUNCTIONS = {"maximum": "torch.maximum", "minimum": "torch.minimum"}
# ops whose torch form takes a Python number for an operand, so a scalar constant can be written as one
TAKES_NUMBERS = frozenset({"add", "sub", "mul", "div", "floordiv", "mod", "pow", "eq", "ne", "lt", "le", "gt", "ge",
                           "where"})


@emits(*UNARY)
def _unary(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    src = fn.graph[node.inputs[0]]
    if src.op == "linear" and linear_activation(fn, src) is node:
        # the linear applied it; the value keeps the name the spec gave it
        return fn.let(ins[0], node.name) if spec_named(fn.graph, node) else ins[0]
    return UNARY[node.op](ins[0])


@emits(*OPERATORS, *FUNCTIONS)
def _binary(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    out = node.tensor_type
    ts = [fn.in_type(node, i) for i in range(2)]
    a, b = (align(x, t, out.names) for x, t in zip(ins, ts, strict=True))
    e = P.binop(OPERATORS[node.op], a, b) if node.op in OPERATORS else call(FUNCTIONS[node.op], a, b)
    got = BINARY_TORCH[node.op](_dummy(ins[0], ts[0]), _dummy(ins[1], ts[1])).dtype
    return cast_to(fn, e, got, out.dtype)


@emits("where")
def _where(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    out = node.tensor_type
    ts = [fn.in_type(node, i) for i in range(3)]
    c, a, b = (align(x, t, out.names) for x, t in zip(ins, ts, strict=True))
    got = torch.where(torch.ones((), dtype=torch.bool), _dummy(ins[1], ts[1]), _dummy(ins[2], ts[2])).dtype
    return cast_to(fn, call("torch.where", c, a, b), got, out.dtype)


@emits("cast")
def _cast(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return method(ins[0], "to", fn.dtype(node.attrs["dtype"]))


@emits("dropout")
def _dropout(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return call("F.dropout", ins[0], node.attrs["p"], P.dotted("self.training"))


@emits("clamp")
def _clamp(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    bounds = {k: node.attrs[k] for k in ("min", "max") if node.attrs[k] is not None}
    return call("torch.clamp", ins[0], **bounds)


# ---- learned maps ----
def _module(fn: FunctionGen, node: Node, kind: str, params: list[str]) -> str | None:
    """The attribute of the torch module holding exactly these parameters, if the plan made one."""
    found = {fn.plan.module_of.get(p) for p in params}
    if len(found) == 1:
        got = found.pop()
        if got is not None and got[1] == kind:
            return got[0]
    return None


# activations the `linear` helper applies (its LINEAR_ACTIVATIONS table says how, in oneDNN and in torch). Not
# relu: oneDNN's relu post-op turns NaN into 0 where torch.relu keeps it.
LINEAR_ACTIVATIONS = frozenset({"gelu", "gelu_tanh", "silu", "sigmoid", "tanh"})


def linear_activation(fn: FunctionGen, lin: Node) -> Node | None:
    """The activation a -O2 `linear` applies itself: the next member of its epilogue group, when oneDNN has it
    and it is the linear's only use. Both the linear's and the activation's emitters ask, so they agree."""
    group_name = lin.meta.get("fusion_group")
    if fn.mg.opt < 2 or group_name is None:
        return None
    group = fn.graph.meta.get("fusion_groups", {}).get(group_name)
    if group is None or group.kind != "epilogue" or group.nodes[0] != lin.name or len(group.nodes) < 2:
        return None
    act = fn.graph[group.nodes[1]]
    users = fn.users(lin.name)
    if act.op not in LINEAR_ACTIVATIONS or act.inputs[0] != lin.name or len(users) != 1 or \
            lin.name in fn.graph.outputs or act.tensor_type.dtype != lin.tensor_type.dtype:
        return None
    return act


@emits("linear")
def _linear(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    """`F.linear` / the planned `nn.Linear` at -O0 and -O1; at -O2 the `linear` helper (and `Linear` module),
    which runs oneDNN's linear with the epilogue's activation when autograd records nothing."""
    mod = _module(fn, node, "linear", node.inputs[1:])
    t, axis = fn.in_type(node, 0), node.attrs["axis"]
    act = linear_activation(fn, node)   # always None below -O2
    kw = {"activation": act.op} if act is not None else {}
    if act is not None:
        fn.mg.note(f"torch: {fn.graph.name}.{node.name}: {act.op} applied by the linear (a oneDNN post-op on CPU "
                   "inference)")
    if mod is not None:
        return on_last(ins[0], t, axis, lambda x: call(fn.member(mod), x, **kw))
    func = fn.mg.helper("linear") if fn.mg.opt >= 2 else "F.linear"
    return on_last(ins[0], t, axis, lambda x: call(func, x, *ins[1:], **kw))


@emits("embedding")
def _embedding(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    mod = _module(fn, node, "embedding", node.inputs[1:])
    if mod is not None:
        return call(fn.member(mod), ins[0])
    if "padding_idx" in node.attrs:
        return call("F.embedding", ins[0], ins[1], padding_idx=node.attrs["padding_idx"])
    return call("F.embedding", ins[0], ins[1])


@emits("layernorm")
def _layernorm(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    t = fn.in_type(node, 0)
    mod = _module(fn, node, "layernorm", node.inputs[1:])
    if mod is not None:
        return on_last(ins[0], t, node.attrs["axis"], lambda x: call(fn.member(mod), x))
    n = fn.size(t.axes[t.index(node.attrs["axis"])].size)
    return on_last(ins[0], t, node.attrs["axis"],
                   lambda x: call("F.layer_norm", x, P.TupleExpr((n,)), ins[1], ins[2], node.attrs["eps"]))


@emits("rmsnorm")
def _rmsnorm(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    mod = _module(fn, node, "rmsnorm", node.inputs[1:])
    if mod is not None:
        return on_last(ins[0], fn.in_type(node, 0), node.attrs["axis"], lambda x: call(fn.member(mod), x))
    helper = fn.mg.helper("rms_norm")
    return on_last(ins[0], fn.in_type(node, 0), node.attrs["axis"],
                   lambda x: P.Call(helper, (x, ins[1], P.lit(node.attrs["eps"]))))


@emits("batchnorm")
def _batchnorm(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    t = fn.in_type(node, 0)
    i = t.index(node.attrs["axis"])
    x = method(ins[0], "movedim", i, 1) if t.rank > 1 and i != 1 else ins[0]
    mod = _module(fn, node, "batchnorm", node.inputs[1:])
    if mod is not None:
        y: Expr = call(fn.member(mod), x)
    else:
        _, w, b, mean, var, tracked = ins
        fn.add(Stmt([(0, ("if self.training:",)), (1, (method(tracked, "add_", 1),))],
                    evaluates=[node.name], inline_into=False))
        y = call("F.batch_norm", x, mean, var, w, b, P.dotted("self.training"), node.attrs["momentum"],
                 node.attrs["eps"])
    return method(y, "movedim", 1, i) if t.rank > 1 and i != 1 else y


# ---- reductions ----
@emits("softmax")
def _softmax(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return call("F.softmax", ins[0], dim=dim(fn.in_type(node, 0), node.attrs["axis"]))


@emits("sum", "mean", "amax", "amin")
def _reduce(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return method(ins[0], node.op, dim=dim(fn.in_type(node, 0), node.attrs["axis"]))


@emits("cumsum")
def _cumsum(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return call("torch.cumsum", ins[0], dim=dim(fn.in_type(node, 0), node.attrs["axis"]))


# ---- contraction ----
def contract(ins: list[Expr], ts: list[TensorType], out: TensorType,
             linear: Callable[[], Expr] = lambda: P.dotted("F.linear")) -> Expr:
    """Sum of products by axis names: `a @ b` (with permutes) where it is a (batched) matmul, `linear()` (the
    function to call) for a product with a [features, in] matrix, else `torch.einsum`."""
    if len(ins) == 2:
        mm = _matmul(ins[0], ins[1], ts[0], ts[1], out, linear)
        if mm is not None:
            return mm
    return call("torch.einsum", einsum_string(ts, out), *ins)


def _matmul(a: Expr, b: Expr, ta: TensorType, tb: TensorType, out: TensorType,
            linear: Callable[[], Expr]) -> Expr | None:
    A, B, O = ta.names, tb.names, out.names
    summed = [n for n in (*A, *(n for n in B if n not in A)) if n not in O]
    if len(summed) != 1 or summed[0] not in A or summed[0] not in B:
        return None
    k = summed[0]
    batch = [n for n in O if n in A and n in B]
    fa = [n for n in O if n in A and n not in B]
    fb = [n for n in O if n in B and n not in A]
    if not batch and len(fb) == 1 and tb.rank == 2:
        # x[..., k] against a matrix: F.linear when the matrix is [out, k] (as nn.Linear keeps it)
        left = permute(a, [A.index(n) for n in (*fa, k)])
        y = call(linear(), left, b) if (fb[0], k) == B else P.binop("@", left, b)
        return permute(y, [(*fa, *fb).index(n) for n in O])
    if len(fa) != 1 or len(fb) != 1 or len(batch) != len(set(A) & set(B)) - 1:
        return None
    left = permute(a, [A.index(n) for n in (*batch, fa[0], k)])
    right = permute(b, [B.index(n) for n in (*batch, k, fb[0])])
    y: Expr = P.binop("@", left, right)
    return permute(y, [(*batch, fa[0], fb[0]).index(n) for n in O])


@emits("einsum")
def _einsum(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    types = [fn.in_type(node, i) for i in range(len(ins))]
    if fn.mg.opt >= 2:   # a product with a [features, in] matrix (an LM head) runs as -O2's linears do
        return contract(ins, types, node.tensor_type, lambda: fn.mg.helper("linear"))
    return contract(ins, types, node.tensor_type)


@emits("attention")
def _attention(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    """Spelled out as the reference does: scores, masks, softmax over the key axis, weighted values."""
    from nnspec.compiler.ops.attention import attention_types
    a = node.attrs
    types = [fn.in_type(node, i) for i in range(len(ins))]
    scores_t, out_t = attention_types(types, a, fn.mg.model.dims)
    if fn.mg.opt >= 2:
        fused = _sdpa(fn, node, ins, types, scores_t, out_t)
        if fused is not None:
            return fused
    names = scores_t.names
    s = fn.let(P.binop("*", contract(ins[:2], types[:2], scores_t), P.lit(a["scale"])), "scores",
               comment=_comment(scores_t))
    extra = list(zip(ins[3:], types[3:], strict=True))
    if a["has_mask"]:
        m, m_t = extra.pop(0)
        s = fn.let(method(s, "masked_fill", P.Unary("~", align(m, m_t, names)), NEG_INF), "scores", rebind=s)
    if a["has_bias"]:
        bias, b_t = extra.pop(0)
        s = fn.let(P.binop("+", s, align(bias, b_t, names)), "scores", rebind=s)
    if a["causal"]:
        qa, ka = scores_t.axis(a["query"]), scores_t.axis(a["key"])
        assert qa is not None and ka is not None
        allowed = method(call("torch.ones", fn.size(qa.size), fn.size(ka.size), dtype=fn.dtype(DType.bool),
                              **fn.device_kw()), "tril")
        mask_t = TensorType((qa, ka), DType.bool)
        s = fn.let(method(s, "masked_fill", P.Unary("~", align(allowed, mask_t, names)), NEG_INF), "scores",
                   rebind=s)
    p = call("F.softmax", s, dim=dim(scores_t, a["key"]))
    if a.get("dropout", 0.0) > 0:
        p = call("F.dropout", p, a["dropout"], P.dotted("self.training"))
    return contract([p, ins[2]], [scores_t, types[2]], out_t)


def _sdpa(fn: FunctionGen, node: Node, ins: list[Expr], types: list[TensorType], scores_t: TensorType,
          out_t: TensorType) -> Expr | None:
    """`F.scaled_dot_product_attention` when q, k and v share their batch axes (no broadcast, so no grouped
    heads) and there is no boolean mask (a row with every key masked is NaN in the reference)."""
    a = node.attrs
    q_t, k_t, v_t = types[:3]
    qn, kn, dn = a["query"], a["key"], a["dim"]
    batch = [n for n in scores_t.names if n not in (qn, kn)]
    value = [n for n in v_t.names if n not in batch and n != kn]
    if a.get("dropout", 0.0) > 0 and scores_t.names != (*batch, qn, kn):
        return None     # SDPA drops over [batch..., q, k]: spelled out, dropout draws as the spec's does
    shared = [n for n in batch if n in k_t.names]
    if shared and len(shared) < len(batch):
        return _sdpa_grouped(fn, node, ins, types, scores_t, out_t, shared)
    if a["has_mask"] or len(value) != 1 or sorted(q_t.names) != sorted([*batch, qn, dn]) or \
            sorted(k_t.names) != sorted([*batch, kn, dn]) or sorted(v_t.names) != sorted([*batch, kn, *value]) or \
            sorted(out_t.names) != sorted([*batch, qn, *value]):
        return None
    q = permute(ins[0], [q_t.index(n) for n in (*batch, qn, dn)])
    k = permute(ins[1], [k_t.index(n) for n in (*batch, kn, dn)])
    v = permute(ins[2], [v_t.index(n) for n in (*batch, kn, *value)])
    kwargs: dict[str, Any] = {}
    if a["has_bias"]:
        if a["causal"]:
            return None
        kwargs["attn_mask"] = align(ins[3], types[3], tuple([*batch, qn, kn]))
    elif a["causal"]:
        kwargs["is_causal"] = True
    if a.get("dropout", 0.0) > 0:   # SDPA drops probabilities whenever dropout_p > 0: only while training
        kwargs["dropout_p"] = P.IfExp(P.lit(a["dropout"]), P.dotted("self.training"), P.lit(0.0))
    y: Expr = call("F.scaled_dot_product_attention", q, k, v, **kwargs, scale=a["scale"])
    perm = [[*batch, qn, *value].index(n) for n in out_t.names]
    if perm != sorted(perm):   # a statement of its own, so the permute after it reads as in nanoGPT
        y = fn.let(y, "y", comment="(" + ", ".join([*batch, qn, *value]) + ")")
    return permute(y, perm)


def _sdpa_grouped(fn: FunctionGen, node: Node, ins: list[Expr], types: list[TensorType], scores_t: TensorType,
                  out_t: TensorType, shared: list[str]) -> Expr | None:
    """Grouped-query attention (q has head axes k and v lack, as `q[B, T, kv, group, d]` against
    `k[B, S, kv, d]`) as SDPA with `enable_gqa`: q's heads are laid out kv-major, so query head h reads key/value
    head h // group, as SDPA does. Plain causal or unmasked attention only (no mask, bias or dropout)."""
    a = node.attrs
    q_t, k_t, v_t = types[:3]
    qn, kn, dn = a["query"], a["key"], a["dim"]
    group = [n for n in scores_t.names if n not in (qn, kn) and n not in shared]
    value = [n for n in v_t.names if n not in shared and n != kn]
    if a["has_mask"] or a["has_bias"] or a.get("dropout", 0.0) > 0 or len(value) != 1 or \
            sorted(q_t.names) != sorted([*shared, *group, qn, dn]) or sorted(k_t.names) != sorted([*shared, kn, dn]) \
            or sorted(v_t.names) != sorted([*shared, kn, *value]) or \
            sorted(out_t.names) != sorted([*shared, *group, qn, *value]):
        return None

    def size(t: TensorType, n: str) -> Expr:
        return fn.size(t.axis(n).size)  # type: ignore[union-attr]

    def heads(x: Expr, t: TensorType, order: list[str]) -> Expr:
        y = permute(x, [t.index(n) for n in order])
        if len(order) == 4:
            return y
        return method(y, "reshape", size(t, order[0]), Lit(-1), size(t, order[-2]), size(t, order[-1]))
    q = heads(ins[0], q_t, [*shared, *group, qn, dn])
    k = heads(ins[1], k_t, [*shared, kn, dn])
    v = heads(ins[2], v_t, [*shared, kn, *value])
    kwargs: dict[str, Any] = {"is_causal": True} if a["causal"] else {}
    order = [*shared, *group, qn, *value]
    y: Expr = fn.let(call("F.scaled_dot_product_attention", q, k, v, **kwargs, scale=a["scale"], enable_gqa=True),
                     "y", comment="(" + ", ".join([shared[0], "heads", qn, *value]) + ")")
    y = method(y, "reshape", *[size(out_t, n) for n in order])
    return permute(y, [order.index(n) for n in out_t.names])


def _comment(t: TensorType) -> str:
    return "(" + ", ".join(t.names) + ")"


# ---- shapes ----
@emits("rearrange")
def _rearrange(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    t = fn.in_type(node, 0)
    perm, axes = node.attrs["perm"], node.attrs["axes"]
    y = permute(ins[0], perm)
    moved = [t.axes[p] for p in perm]
    sizes = fn.mg.model.dims
    if len(moved) == len(axes) and all(sizes.equal(m.size, a.size) is True for m, a in zip(moved, axes,
                                                                                          strict=True)):
        return y     # a relabel (no code) or a pure permute
    return method(y, "reshape", *[fn.size(a.size) for a in axes])


@emits("select")
def _select(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    i = fn.in_type(node, 0).index(node.attrs["axis"])
    return P.Index(ins[0], (*[Slice()] * i, Lit(node.attrs["index"])))


@emits("slice")
def _slice(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    a = node.attrs
    i = fn.in_type(node, 0).index(a["axis"])
    part = Slice(Lit(a["start"]) if a["start"] else None, Lit(a["stop"]), Lit(a["step"]) if a["step"] != 1 else None)
    return P.Index(ins[0], (*[Slice()] * i, part))


@emits("concat")
def _concat(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    """Operands aligned by name with the first that has the axis; one lacking an axis is expanded over it."""
    axis = node.attrs["axis"]
    types = [fn.in_type(node, i) for i in range(len(ins))]
    ref = concat_reference(types, axis)  # the same operand the shape rule aligned to
    assert ref is not None
    parts = []
    for x, t in zip(ins, types, strict=True):
        y = align(x, t, ref.names, full=True)
        if any(n not in t.names for n in ref.names):
            y = method(y, "expand", *[Lit(-1) if a.name in t.names else Lit(1) if a.name == axis else fn.size(a.size)
                                      for a in ref.axes])
        parts.append(y)
    if node.meta.get("weights_only"):
        # parameters alone (fuse-linear's weights): concatenated once, not on every call
        fn.mg.note(f"torch: {fn.graph.name}.{node.name}: concatenated once and kept until a part changes")
        return call(fn.mg.helper("cat_weights"), P.Name("self"), node.name, P.ListExpr(tuple(parts)),
                    dim=dim(ref, axis))
    return call("torch.cat", P.ListExpr(tuple(parts)), dim=dim(ref, axis))


@emits("full")
def _full(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    shape = P.TupleExpr(tuple(fn.size(a.size) for a in node.attrs["axes"]))
    return call("torch.full", shape, P.lit(node.attrs["value"]), dtype=fn.dtype(node.attrs["dtype"]), **fn.device_kw())


@emits("gather")
def _gather(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return call("torch.gather", ins[0], dim(fn.in_type(node, 0), node.attrs["axis"]), ins[1])


@emits("scatter")
def _scatter(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    x, idx, src = ins
    want = node.tensor_type.dtype
    x = cast_to(fn, x, TORCH_DTYPES[fn.in_type(node, 0).dtype], want)
    src = cast_to(fn, src, TORCH_DTYPES[fn.in_type(node, 2).dtype], want)
    name = "scatter_add" if node.attrs["reduce"] == "add" else "scatter"
    return method(x, name, dim(fn.in_type(node, 0), node.attrs["axis"]), idx, src)


@emits("topk")
def _topk(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return call("torch.topk", ins[0], node.attrs["k"], dim=dim(fn.in_type(node, 0), node.attrs["axis"]))


@emits("sort")
def _sort(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return call("torch.sort", ins[0], dim=dim(fn.in_type(node, 0), node.attrs["axis"]),
                descending=node.attrs["descending"], stable=True)


# ---- sources ----
@emits("arange")
def _arange(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return call("torch.arange", fn.size(node.attrs["axis"].size), **fn.device_kw())


@emits("causal_mask")
def _causal_mask(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    q, k = fn.size(node.attrs["q"].size), fn.size(node.attrs["k"].size)
    return method(call("torch.ones", q, k, dtype=fn.dtype(DType.bool), **fn.device_kw()), "tril")


@emits("param", "buffer")
def _param(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return fn.member(node.attrs["path"])


@emits("const")
def _const(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    """A Python number where every use is an operator that takes one beside a tensor; else a 0-dim tensor."""
    t = node.tensor_type
    v = node.attrs["value"]
    value = bool(v) if t.dtype == DType.bool else float(v) if t.dtype.is_float else int(v)
    users = fn.users(node.name)
    number = bool(users) and node.name not in fn.graph.outputs and t.dtype in (DType.float32, DType.int64,
                                                                               DType.bool) and all(
        u.op in TAKES_NUMBERS and (u.op != "where" or u.inputs[0] != node.name)
        and any(fn.graph[i].op != "const" for i in u.inputs) for u in users)
    if number:
        return P.lit(value)
    return call("torch.tensor", P.lit(value), dtype=fn.dtype(t.dtype), **fn.device_kw())


@emits("sinusoidal")
def _sinusoidal(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    a = node.attrs
    return call(fn.mg.helper("sinusoidal_table"), fn.size(a["pos"].size), fn.size(a["dim"].size), a["base"],
                **fn.device_kw())


@emits("rotary")
def _rotary(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    a = node.attrs
    t = fn.in_type(node, 0)
    pos, feat = t.axis(a["pos"]), t.axis(a["dim"])
    assert pos is not None and feat is not None
    x = ins[0]
    positions = ins[1] if len(ins) > 1 else Lit(None)
    cos, sin = fn.let_many(call(fn.mg.helper("rotary_tables"), fn.size(pos.size), fn.size(feat.size), a["base"],
                                positions, P.Attr(x, "device"), P.Attr(x, "dtype")), ["cos", "sin"])
    table = TensorType((pos, feat), t.dtype)
    apply = "apply_rotary" if a["style"] == "half" else "apply_rotary_interleaved"
    return call(fn.mg.helper(apply), x, align(cos, table, t.names), align(sin, table, t.names),
                t.index(a["dim"]))


# ---- spatial ----
def _to_channels_first(fn: FunctionGen, x: Expr, t: TensorType, lead: list[str], rest: list[str]
                       ) -> tuple[Expr, list[str]]:
    """Permute to [batch..., *rest] and flatten the batch axes (every axis not in `rest`) into one."""
    batch = [n for n in t.names if n not in rest]
    y = permute(x, [t.index(n) for n in (*batch, *rest)])
    if len(batch) != 1:
        y = method(y, "reshape", -1, *lead, *[fn.size(t.axes[t.index(n)].size) for n in rest])
    return y, batch


def _from_channels_first(fn: FunctionGen, y: Expr, t: TensorType, batch: list[str], names: list[str],
                         out: TensorType, drop_lead: int = 0) -> Expr:
    if len(batch) != 1 or drop_lead:
        sizes = [fn.size(t.axes[t.index(n)].size) for n in batch] + [fn.size(out.axes[out.index(n)].size)
                                                                     for n in names]
        y = method(y, "reshape", *sizes)
    return permute(y, [[*batch, *names].index(n) for n in out.names])


@emits("conv")
def _conv(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    a = node.attrs
    t, out = fn.in_type(node, 0), node.tensor_type
    y, batch = _to_channels_first(fn, ins[0], t, [], [a["channel"], *a["spatial"]])
    mod = _module(fn, node, "conv", node.inputs[1:])
    if mod is not None:
        y = call(fn.member(mod), y)
    else:
        conv = f"F.conv{len(a['spatial'])}d"
        y = call(conv, y, ins[1], ins[2] if len(ins) > 2 else Lit(None), stride=P.TupleExpr(P.ints(a["stride"])),
                 padding=P.TupleExpr(P.ints(a["padding"])))
    names = [out.axes[t.index(a["channel"])].name, *(o.name for o in a["out_axes"])]
    return _from_channels_first(fn, y, t, batch, names, out)


@emits("pool")
def _pool(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    a = node.attrs
    t, out = fn.in_type(node, 0), node.tensor_type
    spatial = list(a["spatial"])
    batch = [n for n in t.names if n not in spatial]
    y = permute(ins[0], [t.index(n) for n in (*batch, *spatial)])
    y = method(y, "reshape", -1, 1, *[fn.size(t.axes[t.index(n)].size) for n in spatial])
    y = call(f"F.{a['kind']}_pool{len(spatial)}d", y, P.TupleExpr(P.ints(a["kernel"])),
             P.TupleExpr(P.ints(a["stride"])), P.TupleExpr(P.ints(a["padding"])))
    return _from_channels_first(fn, y, t, batch, [o.name for o in a["out_axes"]], out, drop_lead=1)


# ---- structure ----
@emits("call")
def _call(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return P.Call(fn.member(node.attrs["scope"]), tuple(ins))


@emits("getitem")
def _getitem(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    if isinstance(ins[0], P.TupleExpr):
        return ins[0].items[node.attrs["index"]]
    return P.Index(ins[0], (Lit(node.attrs["index"]),))


@emits("repeat")
def _repeat(fn: FunctionGen, node: Node, ins: list[Expr]) -> None:
    """`for layer in self.h: x = layer(x)`; with shared weights `for _ in range(N): x = self.h(x)`."""
    a = node.attrs
    n = node.name
    fn.add(Stmt([(0, (Var(n), " = ", ins[0]))], n, pinned=True, inline_into=False))
    scope = fn.member(a["scope"])
    if a["shared"]:
        head: tuple[str | Expr, ...] = ("for _ in range(", Lit(a["count"]), "):")
        step = P.Call(scope, (Var(n), *ins[1:]))
    else:
        layer = P.Name(fn.fresh(fn.mg.model.templates[a["block"]].meta.get("block", "layer")))
        head = ("for ", layer, " in ", scope, ":")
        step = P.Call(layer, (Var(n), *ins[1:]))
    fn.add(Stmt([(0, head), (1, (Var(n), " = ", step))], inline_into=False, evaluates=[n]))


@emits("scan")
def _scan(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    """A recurrence over axis `axis`: a Python loop over its positions, as the reference runs it."""
    a = node.attrs
    types = [fn.in_type(node, i) for i in range(len(ins))]
    dims = [t.index(a["axis"].name) for t in types[1:]]
    named = {u.attrs["index"]: u.name for u in fn.users(node.name) if u.op == "getitem"}
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


# ---- module-level helpers a generated file may need (name -> (source, helpers it calls)) ----
HELPERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "LINEAR_ACTIVATIONS": ('''
# activation -> (oneDNN post-op, its algorithm, the same in torch): what `linear` applies to its output
LINEAR_ACTIVATIONS = {
    "none": ("none", "", None),
    "gelu": ("gelu", "none", F.gelu),
    "gelu_tanh": ("gelu", "tanh", lambda y: F.gelu(y, approximate="tanh")),
    "silu": ("swish", "", F.silu),
    "sigmoid": ("sigmoid", "", torch.sigmoid),
    "tanh": ("tanh", "", torch.tanh),
}
''', ()),
    "runs_onednn": ('''
def runs_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Can oneDNN's fused linear compute this call? It has no autograd formula and tracers cannot see into it,
    so only for CPU inference in eager mode; `torch.backends.mkldnn.flags(enabled=False)` turns it off. bf16 only
    where oneDNN has bf16 kernels (AVX-512 or AMX): elsewhere it refuses to build the primitive."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (
        x.device.type == "cpu"
        and x.dim() >= 2
        and x.numel() > 0
        and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()))
        and all(t.dtype == x.dtype for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )
''', ()),
    "linear": ('''
def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str = "none"
) -> torch.Tensor:
    """`activation(F.linear(x, weight, bias))`. On CPU inference, one oneDNN call that applies the activation to
    each output tile before writing it; its matrix product also beats the BLAS behind F.linear on some CPUs."""
    post_op, algorithm, torch_fn = LINEAR_ACTIVATIONS[activation]
    if runs_onednn(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, [], algorithm)
    y = F.linear(x, weight, bias)
    return y if torch_fn is None else torch_fn(y)
''', ("LINEAR_ACTIVATIONS", "runs_onednn")),
    "Linear": ('''
class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) computed by `linear`, with an optional activation."""

    def forward(self, x: torch.Tensor, activation: str = "none") -> torch.Tensor:
        return linear(x, self.weight, self.bias, activation)
''', ("linear",)),
    "cat_weights": ('''
def cat_weights(owner: nn.Module, key: str, parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """`torch.cat(parts, dim)` of parameters (a fused linear's weights), made once and kept on `owner` until one
    of them is replaced or modified in place; made afresh when autograd records or torch traces the call."""
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(p.requires_grad for p in parts)):
        return torch.cat(parts, dim=dim)
    stamp = [(p.data_ptr(), p._version, p.dtype, p.device, p.shape) for p in parts]
    cache = owner.__dict__.setdefault("_fused_weights", {})
    kept = cache.get(key)
    if kept is not None and kept[0] == stamp:
        return kept[2]
    with torch.inference_mode(False), torch.no_grad():
        # holding the parts keeps their memory from being reused by other tensors while the stamp names it
        cache[key] = (stamp, [p.detach() for p in parts], torch.cat(parts, dim=dim))
    return cache[key][2]
''', ()),
    "rms_norm": ('''
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`x / sqrt(mean(x^2) + eps) * weight` over the last dim, with statistics in fp32."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)
''', ()),
    "RMSNorm": ('''
class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dim with a learned scale."""

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)
''', ("rms_norm",)),
    "rotary_tables": ('''
def rotary_tables(
    n: int, d: int, base: float, positions: torch.Tensor | None, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape [n, d] in the half layout (GPT-NeoX, Llama): each frequency twice."""
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
    pos = torch.arange(n, device=device).float() if positions is None else positions.float()
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)
''', ()),
    "apply_rotary": ('''
def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dim: int) -> torch.Tensor:
    """Rotate the two halves of `dim` as pairs (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    x1, x2 = x.chunk(2, dim=dim)
    return x * cos + torch.cat((-x2, x1), dim=dim) * sin
''', ()),
    "apply_rotary_interleaved": ('''
def apply_rotary_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dim: int) -> torch.Tensor:
    """Rotate adjacent pairs (x0, x1), (x2, x3), ... of `dim` (GPT-J layout)."""
    d = x.shape[dim]
    cos = cos.narrow(dim, 0, d // 2).repeat_interleave(2, dim=dim)
    sin = sin.narrow(dim, 0, d // 2).repeat_interleave(2, dim=dim)
    pairs = x.unflatten(dim, (d // 2, 2))
    rotated = torch.stack((-pairs.select(dim + 1, 1), pairs.select(dim + 1, 0)), dim=dim + 1).flatten(dim, dim + 1)
    return x * cos + rotated * sin
''', ()),
    "sinusoidal_table": ('''
def sinusoidal_table(n: int, d: int, base: float, device: torch.device | None = None) -> torch.Tensor:
    """[n, d]: sin(pos / base^(2i/d)) at even features, cos at odd ones (Vaswani et al. 2017)."""
    pos = torch.arange(n, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-torch.log(torch.tensor(base)) / d))
    table = torch.zeros(n, d, device=device)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)
    return table
''', ()),
}
