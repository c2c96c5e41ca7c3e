"""Elementwise IR ops as Triton expressions: the body shared by every generated kernel.

`Body` turns a chain of pointwise nodes into lines of Triton code over already-loaded operands. Values are
computed in fp32 (floats), int64/int32 (integers) or int1 (bools); a node whose type is fp16 or bf16 is rounded
to that type after its op, as torch rounds after each op, so a fused chain gives torch's numbers up to the
last bit of fp32 arithmetic. An op or operand the kernel cannot express raises `Unsupported` with the reason,
and the group falls back to torch code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from nnspec.compiler.ir import DType, Graph, Node

TL_TYPES = {DType.float32: "tl.float32", DType.float16: "tl.float16", DType.bfloat16: "tl.bfloat16",
            DType.int64: "tl.int64", DType.int32: "tl.int32", DType.bool: "tl.int1"}
SQRT_1_2 = 0.7071067811865476
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


def _tanh(x: str) -> str:
    # tanh is libdevice-only in some Triton releases; 2 sigmoid(2x) - 1 is in every one
    return f"(2.0 * tl.sigmoid(2.0 * {x}) - 1.0)"


UNARY: dict[str, Callable[[str], str]] = {
    "neg": lambda x: f"-{x}",
    "abs": lambda x: f"tl.abs({x})",
    "relu": lambda x: f"tl.where({x} > 0, {x}, 0.0)",
    "gelu": lambda x: f"0.5 * {x} * (1.0 + tl.erf({x} * {SQRT_1_2}))",
    "silu": lambda x: f"{x} * tl.sigmoid({x})",
    "sigmoid": lambda x: f"tl.sigmoid({x})",
    "tanh": _tanh,
    "exp": lambda x: f"tl.exp({x})",
    "log": lambda x: f"tl.log({x})",
    "sqrt": lambda x: f"tl.sqrt({x})",
    "rsqrt": lambda x: f"tl.rsqrt({x})",
    "logical_not": lambda x: f"({x} == 0)",
}
INFIX = {"add": "+", "sub": "-", "mul": "*", "eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=",
         "logical_and": "&", "logical_or": "|"}
COMPARE = frozenset({"eq", "ne", "lt", "le", "gt", "ge"})
SUPPORTED = frozenset(UNARY) | frozenset(INFIX) | {"gelu_tanh", "div", "floordiv", "mod", "pow", "maximum",
                                                   "minimum", "where", "cast", "dropout", "clamp"}


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

    def emit(self, node: Node, offsets: str) -> None:
        """Compute `node` from its (bound) inputs into a variable named after it."""
        op, out = node.op, node.tensor_type.dtype
        if op not in SUPPORTED:
            raise Unsupported(f"{op} is not a pointwise op a kernel computes")
        ct = compute_type(out)
        ins = node.inputs
        if op == "gelu_tanh":   # its inner polynomial on a line of its own
            x = self._wrap(self.arg(ins[0], ct))
            inner = self._tmp(f"{SQRT_2_PI} * ({x} + 0.044715 * {x} * {x} * {x})")
            expr = f"0.5 * {x} * (1.0 + {_tanh(inner)})"
        elif op in UNARY:
            arg_t = "tl.int1" if op == "logical_not" else ct
            expr = UNARY[op](self._wrap(self.arg(ins[0], arg_t)))
            if op in ("neg", "abs") and not out.is_float:
                expr = {"neg": f"-{self._wrap(self.arg(ins[0], ct))}",
                        "abs": f"tl.abs({self.arg(ins[0], ct)})"}[op]
        elif op in COMPARE:
            t = _common([self.values[i].dtype for i in ins])
            a, b = (self._wrap(self.arg(i, t)) for i in ins)
            expr = f"{a} {INFIX[op]} {b}"
        elif op in INFIX:
            a, b = (self._wrap(self.arg(i, ct)) for i in ins)
            expr = f"{a} {INFIX[op]} {b}"
        elif op == "div":
            if out.is_float:
                a, b = (self._wrap(self.arg(i, ct)) for i in ins)
                expr = f"{a} / {b}"
            else:   # torch divides integers exactly, then the IR's integer type truncates toward zero
                a, b = (self._wrap(self.arg(i, "tl.float64")) for i in ins)
                expr = f"({a} / {b}).to({ct})"
        elif op in ("floordiv", "mod"):
            expr = self._floor_div_mod(op, ins, ct, out)
        elif op == "pow":
            expr = self._pow(ins, ct)
        elif op in ("maximum", "minimum"):
            a, b = (self.arg(i, ct) for i in ins)
            expr = f"tl.{op}({a}, {b})"
        elif op == "where":
            c = self.arg(ins[0], "tl.int1")
            a, b = (self.arg(i, ct) for i in ins[1:])
            expr = f"tl.where({c}, {a}, {b})"
        elif op == "cast":
            expr = self.arg(ins[0], ct)
        elif op == "clamp":
            expr = self.arg(ins[0], ct)
            bound = DType.float32 if out.is_float else DType.int64
            if node.attrs["min"] is not None:
                expr = f"tl.maximum({expr}, {literal(node.attrs['min'], bound)})"
            if node.attrs["max"] is not None:
                expr = f"tl.minimum({expr}, {literal(node.attrs['max'], bound)})"
        else:  # dropout: identity unless training; each dropout in a kernel draws from its own stream
            p = node.attrs["p"]
            x = self.arg(ins[0], ct)
            expr = x
            if p != 0.0:   # a constexpr branch: in eval mode the kernel draws no random numbers
                self.uses_seed = True
                self.dropout_salt += 1
                keep = f"tl.rand(seed + {self.dropout_salt}, {offsets}) >= {p!r}"
                scaled = f"{self._wrap(x)} * {1.0 / (1.0 - p)!r}"
                self.lines += ["if TRAINING:", f"    {self.names(node.name)} = tl.where({keep}, {scaled}, 0.0)",
                               "else:", f"    {self.names(node.name)} = {x}"]
                expr = self.names(node.name)
        var = self.names(node.name)
        if out in (DType.float16, DType.bfloat16):  # round as torch does after each op
            expr = f"({expr}).to({TL_TYPES[out]}).to(tl.float32)"
        if expr != var:
            self.lines.append(f"{var} = {expr}")
        self.values[node.name] = Value(var, out)

    def _floor_div_mod(self, op: str, ins: list[str], ct: str, out: DType) -> str:
        a, b = (self._wrap(self.arg(i, ct)) for i in ins)
        if out.is_float:
            q = f"tl.floor({a} / {b})"
            return q if op == "floordiv" else f"{a} - {b} * {q}"
        # Triton's integer `//` truncates on the GPU and floors in the interpreter: correct either to floor
        t, r = self._tmp(f"{a} // {b}"), None
        r = self._tmp(f"{a} - {t} * {b}")
        q = self._tmp(f"{t} - (({r} != 0) & (({r} < 0) != ({b} < 0))).to({ct})")
        return q if op == "floordiv" else f"{a} - {q} * {b}"

    def _pow(self, ins: list[str], ct: str) -> str:
        base, exponent = self.values[ins[0]], self.values[ins[1]]
        x = self._wrap(self.arg(ins[0], ct))
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
            import math
            return f"tl.exp({self._wrap(self.arg(ins[1], ct))} * {math.log(float(base.const))!r})"
        raise Unsupported("pow with an exponent other than a small constant needs torch's pow (negative bases)")

    def _tmp(self, expr: str) -> str:
        var = f"_t{len(self.lines)}"
        self.lines.append(f"{var} = {expr}")
        return var

    @staticmethod
    def _wrap(code: str) -> str:
        simple = code.replace("_", "").replace(".", "").isalnum() or code.startswith(("tl.", "float("))
        return code if simple and " " not in code else f"({code})"


def _common(dtypes: list[DType]) -> str:
    from nnspec.compiler.ops.registry import promote
    out = dtypes[0]
    for d in dtypes[1:]:
        out = promote(out, d)
    return compute_type(out)
