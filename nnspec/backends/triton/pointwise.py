"""Elementwise IR ops as Triton expressions: the body shared by every generated kernel.

`Body` turns a chain of pointwise nodes into lines of Triton code over already-loaded operands. Values are
computed in fp32 (floats), int64/int32 (integers) or int1 (bools); a node whose type is fp16 or bf16 is rounded
to that type after its op, as torch rounds after each op, so a fused chain gives torch's numbers up to the
last bit of fp32 arithmetic. An op or operand the kernel cannot express raises `Unsupported` with the reason,
and the group falls back to torch code.

What each op computes comes from one table, `RULES`: the op table's `POINTWISE[op].triton` template where its row
has one, and a rule of this file for the rest (ops whose code depends on dtypes or constants, such as integer
`//` or `pow`; ops computed in several steps because the interpreter has no libdevice, such as `log1p` and `round`;
and ops with attributes: `where`, `cast`, `clamp`, `dropout`). An op not in `RULES` has no kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from nnspec.compiler.ir import DType, Graph, Node
from nnspec.compiler.ops.elementwise import POINTWISE, Pointwise
from nnspec.compiler.ops.registry import promote

TL_TYPES = {DType.float32: "tl.float32", DType.float16: "tl.float16", DType.bfloat16: "tl.bfloat16",
            DType.int64: "tl.int64", DType.int32: "tl.int32", DType.bool: "tl.int1"}
SQRT_2_PI = 0.7978845608028654


class Unsupported(Exception):
    """This group (or op) cannot become a kernel; the message says why, for `--explain`."""


def compute_type(d: DType) -> str:
    """The Triton type a value of dtype `d` is held in inside a kernel."""
    return "tl.float32" if d.is_float else TL_TYPES[d]


def loaded(load: str, d: DType) -> str:
    """A `tl.load(...)` of dtype `d` converted to the type kernels compute it in."""
    if d.is_float:
        return f"{load}.to(tl.float32)"
    return f"({load} != 0)" if d == DType.bool else load


def literal(value: float | int | bool, d: DType) -> str:
    if d == DType.bool:
        return "1" if value else "0"
    if d.is_float:
        v = float(value)
        if v != v:
            return 'float("nan")'
        if v in (float("inf"), float("-inf")):
            return f'{"-" if v < 0 else ""}float("inf")'
        return repr(v)
    return str(int(value))


@dataclass
class Value:
    code: str          # an expression or a variable of the kernel
    dtype: DType       # the IR dtype it stands for
    const: float | int | bool | None = None   # a scalar constant folded into the code


@dataclass
class Body:
    """Lines of a kernel computing pointwise nodes from named operand values."""

    graph: Graph
    names: Callable[[str], str]          # node -> kernel variable name
    lines: list[str] = field(default_factory=list)
    values: dict[str, Value] = field(default_factory=dict)
    dropout_salt: int = 0
    uses_seed: bool = False

    def bind(self, node: str, value: Value) -> None:
        self.values[node] = value

    def arg(self, node: str, as_type: str) -> str:
        """Operand `node` converted to the compute type `as_type`."""
        v = self.values[node]
        if v.const is not None:
            return literal(v.const, DType.float32 if as_type == "tl.float32" else
                           DType.bool if as_type == "tl.int1" else DType.int64)
        have = compute_type(v.dtype)
        if have == as_type:
            return v.code
        if as_type == "tl.int1":
            return f"({v.code} != 0)"
        return f"{v.code}.to({as_type})"

    def args(self, node: Node, as_type: str) -> list[str]:
        """Every operand of `node` in `as_type`, parenthesised where an operator could bind into it."""
        return [self.wrap(self.arg(i, as_type)) for i in node.inputs]

    def emit(self, node: Node, offsets: str) -> None:
        """Compute `node` from its (bound) inputs into a variable named after it."""
        rule = RULES.get(node.op)
        if rule is None:
            raise Unsupported(f"{node.op} is not a pointwise op a kernel computes")
        out = node.tensor_type.dtype
        expr = rule(self, node, compute_type(out), offsets)
        var = self.names(node.name)
        if out in (DType.float16, DType.bfloat16):  # round as torch does after each op
            expr = f"({expr}).to({TL_TYPES[out]}).to(tl.float32)"
        if expr != var:
            self.lines.append(f"{var} = {expr}")
        self.values[node.name] = Value(var, out)

    def tmp(self, expr: str) -> str:
        """`expr` on a line of its own; returns the temporary holding it."""
        var = f"_t{len(self.lines)}"
        self.lines.append(f"{var} = {expr}")
        return var

    @staticmethod
    def wrap(code: str) -> str:
        """`code` in parentheses unless a name, a literal or a call: an operator beside it then binds to all of it."""
        simple = code.replace("_", "").replace(".", "").isalnum() or code.startswith(("tl.", "float("))
        return code if simple and " " not in code else f"({code})"


# (body, node, the compute type of its result, the kernel's flat offsets) -> the expression computing the node
Rule = Callable[[Body, Node, str, str], str]


def _template(row: Pointwise) -> Rule:
    """The op table's Triton template, over operands in the result's compute type; a comparison (or logical op)
    reads its operands in their common type, since its result is a bool."""
    template = row.triton
    assert template is not None

    def rule(body: Body, node: Node, ct: str, offsets: str) -> str:
        if row.arity == 1:
            return template.format(x=body.args(node, ct)[0])
        a, b = body.args(node, _common([body.values[i].dtype for i in node.inputs]) if row.returns_bool else ct)
        return template.format(a=a, b=b)
    return rule


def _tanh(x: str) -> str:
    template = POINTWISE["tanh"].triton
    assert template is not None
    return template.format(x=x)


def _gelu_tanh(body: Body, node: Node, ct: str, offsets: str) -> str:
    """The inner polynomial on a line of its own, then the tanh template over it."""
    (x,) = body.args(node, ct)
    inner = body.tmp(f"{SQRT_2_PI} * ({x} + 0.044715 * {x} * {x} * {x})")
    return f"0.5 * {x} * (1.0 + {_tanh(inner)})"


def _div(body: Body, node: Node, ct: str, offsets: str) -> str:
    if node.tensor_type.dtype.is_float:
        a, b = body.args(node, ct)
        return f"{a} / {b}"
    # torch divides integers exactly, then the IR's integer type truncates toward zero
    a, b = body.args(node, "tl.float64")
    return f"({a} / {b}).to({ct})"


def _floor_div_mod(body: Body, node: Node, ct: str, offsets: str) -> str:
    a, b = body.args(node, ct)
    floordiv = node.op == "floordiv"
    if node.tensor_type.dtype.is_float:
        q = f"tl.floor({a} / {b})"
        return q if floordiv else f"{a} - {b} * {q}"
    # Triton's integer `//` truncates on the GPU and floors in the interpreter: correct either to floor
    t = body.tmp(f"{a} // {b}")
    r = body.tmp(f"{a} - {t} * {b}")
    q = body.tmp(f"{t} - (({r} != 0) & (({r} < 0) != ({b} < 0))).to({ct})")
    return q if floordiv else f"{a} - {q} * {b}"


def _pow(body: Body, node: Node, ct: str, offsets: str) -> str:
    """Small constant exponents as products and roots; a positive constant base as exp; anything else needs torch's
    pow (negative bases)."""
    base, exponent = (body.values[i] for i in node.inputs)
    x = body.wrap(body.arg(node.inputs[0], ct))
    e = exponent.const
    if e is not None and float(e) == int(e) and 0 <= int(e) <= 8:
        return " * ".join([x] * int(e)) if int(e) else ("1.0" if ct == "tl.float32" else "1")
    if e is not None and float(e) == 0.5:
        return f"tl.sqrt({x})"
    if e is not None and float(e) == -0.5:
        return f"tl.rsqrt({x})"
    if e is not None and float(e) == -1.0 and ct == "tl.float32":
        return f"1.0 / {x}"
    if base.const is not None and ct == "tl.float32" and float(base.const) > 0:
        return f"tl.exp({body.wrap(body.arg(node.inputs[1], ct))} * {math.log(float(base.const))!r})"
    raise Unsupported("pow with an exponent other than a small constant needs torch's pow (negative bases)")


def _log1p_of(body: Body, x: str) -> str:
    """ln(1 + x) to a few ulps without libdevice (which the interpreter lacks): u = 1 + x rounds, and
    ln(u) * x / (u - 1) corrects for that rounding (Goldberg 1991, Theorem 4); x itself where u is 1 or infinite."""
    u = body.tmp(f"1.0 + {x}")
    return f"tl.where(({u} == 1.0) | ({u} == float(\"inf\")), {x}, tl.log({u}) * ({x} / ({u} - 1.0)))"


def _log1p(body: Body, node: Node, ct: str, offsets: str) -> str:
    (x,) = body.args(node, ct)
    return _log1p_of(body, x)


def _softplus(body: Body, node: Node, ct: str, offsets: str) -> str:
    """torch's softplus: x above its threshold 20, else ln(1 + e^x) (NaN stays NaN: it is not above 20)."""
    (x,) = body.args(node, ct)
    return f"tl.where({x} > 20.0, {x}, {_log1p_of(body, body.tmp(f'tl.exp({x})'))})"


def _expm1(body: Body, node: Node, ct: str, offsets: str) -> str:
    """e^x - 1 to a few ulps (Kahan): with u = e^x, (u - 1) * x / ln(u) cancels the rounding of u; x itself where u
    is 1, -1 where u - 1 is, and u where it is infinite."""
    (x,) = body.args(node, ct)
    u = body.tmp(f"tl.exp({x})")
    um1 = body.tmp(f"{u} - 1.0")
    exact = f"tl.where({um1} == -1.0, -1.0, {um1} * ({x} / tl.log({u})))"
    return f"tl.where({u} == 1.0, {x}, tl.where({u} == float(\"inf\"), {u}, {exact}))"


def _floor(body: Body, node: Node, ct: str, offsets: str) -> str:
    (x,) = body.args(node, ct)
    return f"tl.floor({x})" if ct == "tl.float32" else x   # an integer is its own floor


def _round(body: Body, node: Node, ct: str, offsets: str) -> str:
    """Halves to even, as torch.round, from floor: f = floor(x) and d = x - f (exact, or rounding to 0.5 only where
    x is in (-0.5, 0), whose answer f + 1 = 0 the tie rule also gives); zero keeps x's sign, as in torch."""
    (x,) = body.args(node, ct)
    if ct != "tl.float32":
        return x
    f = body.tmp(f"tl.floor({x})")
    d = body.tmp(f"{x} - {f}")
    even = f"({f} - 2.0 * tl.floor({f} * 0.5) == 0.0)"
    r = body.tmp(f"tl.where({d} > 0.5, {f} + 1.0, tl.where({d} < 0.5, {f}, tl.where({even}, {f}, {f} + 1.0)))")
    return f"tl.where({r} == 0.0, {x} * 0.0, {r})"


def _sign(body: Body, node: Node, ct: str, offsets: str) -> str:
    """-1, 0 or 1 in the operand's type; 0 for NaN and both zeros, as torch.sign."""
    (x,) = body.args(node, ct)
    return f"({x} > 0).to({ct}) - ({x} < 0).to({ct})"


def _straight_through(body: Body, node: Node, ct: str, offsets: str) -> str:
    """The value torch computes, x + (y - x), the difference rounded to the result's type first as torch rounds it
    (a kernel runs only where autograd records nothing, so the detach has no work to do)."""
    x, y = body.args(node, ct)
    out = node.tensor_type.dtype
    diff = f"{y} - {x}"
    if out in (DType.float16, DType.bfloat16):
        diff = f"({diff}).to({TL_TYPES[out]}).to(tl.float32)"
    return f"{x} + {body.tmp(diff)}"


def _extremum(body: Body, node: Node, ct: str, offsets: str) -> str:
    a, b = (body.arg(i, ct) for i in node.inputs)
    return f"tl.{node.op}({a}, {b})"


def _where(body: Body, node: Node, ct: str, offsets: str) -> str:
    c = body.arg(node.inputs[0], "tl.int1")
    a, b = (body.arg(i, ct) for i in node.inputs[1:])
    return f"tl.where({c}, {a}, {b})"


def _cast(body: Body, node: Node, ct: str, offsets: str) -> str:
    return body.arg(node.inputs[0], ct)


def _clamp(body: Body, node: Node, ct: str, offsets: str) -> str:
    expr = body.arg(node.inputs[0], ct)
    bound = DType.float32 if node.tensor_type.dtype.is_float else DType.int64
    if node.attrs["min"] is not None:
        expr = f"tl.maximum({expr}, {literal(node.attrs['min'], bound)})"
    if node.attrs["max"] is not None:
        expr = f"tl.minimum({expr}, {literal(node.attrs['max'], bound)})"
    return expr


def _dropout(body: Body, node: Node, ct: str, offsets: str) -> str:
    """Identity unless training; each dropout in a kernel draws from its own stream."""
    p = node.attrs["p"]
    x = body.arg(node.inputs[0], ct)
    if p == 0.0:
        return x
    # a constexpr branch: in eval mode the kernel draws no random numbers
    body.uses_seed = True
    body.dropout_salt += 1
    keep = f"tl.rand(seed + {body.dropout_salt}, {offsets}) >= {p!r}"
    scaled = f"{body.wrap(x)} * {1.0 / (1.0 - p)!r}"
    var = body.names(node.name)
    body.lines += ["if TRAINING:", f"    {var} = tl.where({keep}, {scaled}, 0.0)", "else:", f"    {var} = {x}"]
    return var


# How a kernel computes each pointwise op it supports: the op table's template, else this file's rule.
RULES: dict[str, Rule] = {
    **{name: _template(row) for name, row in POINTWISE.items() if row.triton is not None},
    "gelu_tanh": _gelu_tanh,
    "softplus": _softplus,
    "log1p": _log1p,
    "expm1": _expm1,
    "floor": _floor,
    "round": _round,
    "sign": _sign,
    "straight_through": _straight_through,
    "div": _div,
    "floordiv": _floor_div_mod,
    "mod": _floor_div_mod,
    "pow": _pow,
    "maximum": _extremum,
    "minimum": _extremum,
    "where": _where,
    "cast": _cast,
    "clamp": _clamp,
    "dropout": _dropout,
}


def _common(dtypes: list[DType]) -> str:
    out = dtypes[0]
    for d in dtypes[1:]:
        out = promote(out, d)
    return compute_type(out)
