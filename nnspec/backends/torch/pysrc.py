"""A small Python expression tree for code generation, and its printer.

Generated code is built as trees, never by pasting text: names go through `ident` (validated), every value
from a spec (strings, numbers) becomes a `Lit` printed by `literal`, so no spec text reaches the output
unescaped. The printer parenthesises by precedence and spaces operators the way `ruff format` does, so
generated files are already formatted.
"""

from __future__ import annotations

import builtins
import dataclasses
import keyword
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

# Python's operator precedence, loosest first
TERNARY, OR, AND, NOT, COMPARE, BITOR, BITXOR, BITAND, SHIFT, ADD, MUL, UNARY, POWER, ATOM = range(1, 15)

BINARY_PREC = {"|": BITOR, "^": BITXOR, "&": BITAND, "+": ADD, "-": ADD, "*": MUL, "/": MUL, "//": MUL,
               "%": MUL, "@": MUL, "**": POWER, "and": AND, "or": OR,
               "==": COMPARE, "!=": COMPARE, "<": COMPARE, "<=": COMPARE, ">": COMPARE, ">=": COMPARE,
               "is": COMPARE, "is not": COMPARE}

BUILTIN_NAMES = frozenset(dir(builtins))


class Expr:
    """An expression; subclasses are frozen dataclasses, so trees compare and hash by value."""

    prec = ATOM


@dataclass(frozen=True)
class Name(Expr):
    id: str


@dataclass(frozen=True)
class Lit(Expr):
    """A literal: int, float, bool, None or str (printed escaped, double-quoted)."""

    value: int | float | bool | str | None

    @property
    def prec(self) -> int:  # type: ignore[override]
        v = self.value
        if isinstance(v, (int, float)) and not isinstance(v, bool) and (v < 0 or (isinstance(v, float) and
                                                                                  math.copysign(1, v) < 0)):
            return UNARY
        return ATOM


@dataclass(frozen=True)
class Attr(Expr):
    obj: Expr
    name: str


@dataclass(frozen=True)
class Call(Expr):
    fn: Expr
    args: tuple[Expr, ...] = ()
    kwargs: tuple[tuple[str, Expr], ...] = ()


@dataclass(frozen=True)
class Slice(Expr):
    lo: Expr | None = None
    hi: Expr | None = None
    step: Expr | None = None


@dataclass(frozen=True)
class Index(Expr):
    obj: Expr
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class BinOp(Expr):
    op: str
    left: Expr
    right: Expr

    @property
    def prec(self) -> int:  # type: ignore[override]
        return BINARY_PREC[self.op]


@dataclass(frozen=True)
class Unary(Expr):
    op: str  # "-", "~", "not"
    operand: Expr

    @property
    def prec(self) -> int:  # type: ignore[override]
        return NOT if self.op == "not" else UNARY


@dataclass(frozen=True)
class IfExp(Expr):
    """`body if test else orelse`."""

    body: Expr
    test: Expr
    orelse: Expr

    @property
    def prec(self) -> int:  # type: ignore[override]
        return TERNARY


@dataclass(frozen=True)
class TupleExpr(Expr):
    items: tuple[Expr, ...]
    bare: bool = False  # `a, b` (a return value or an assignment target) without parentheses

    @property
    def prec(self) -> int:  # type: ignore[override]
        return 0 if self.bare else ATOM


@dataclass(frozen=True)
class ListComp(Expr):
    """`[elt for var in iterable]`."""

    elt: Expr
    var: str
    iterable: Expr


@dataclass(frozen=True)
class ListExpr(Expr):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class DictExpr(Expr):
    items: tuple[tuple[Expr, Expr], ...]


@dataclass(frozen=True)
class FString(Expr):
    """f"..." from literal text and expressions (the expressions must not contain string literals)."""

    parts: tuple[str | Expr, ...]


@dataclass(frozen=True)
class Ref(Expr):
    """A reference to an IR node's value; the code generator replaces it with a variable or an expression."""

    node: str


ELLIPSIS = Name("...")


# ---- helpers that build trees ----
def call(fn: str | Expr, *args: Expr | int | float | str | bool | None, **kwargs: Expr | int | float | str | bool | None
         ) -> Call:
    """`call("torch.where", c, a, b)`; plain Python values become literals."""
    return Call(dotted(fn) if isinstance(fn, str) else fn, tuple(lit(a) for a in args),
                tuple((k, lit(v)) for k, v in kwargs.items()))


def method(obj: Expr, name: str, *args: Expr | int | float | str | bool | None,
           **kwargs: Expr | int | float | str | bool | None) -> Call:
    return call(Attr(obj, name), *args, **kwargs)


def dotted(path: str) -> Expr:
    """`torch.nn.functional` -> nested attributes; every part must be an identifier."""
    head, *rest = path.split(".")
    e: Expr = Name(head)
    for part in rest:
        e = Attr(e, part)
    return e


def lit(v: Expr | int | float | str | bool | None) -> Expr:
    if isinstance(v, Expr):
        return v
    if isinstance(v, float) and not math.isfinite(v):
        return call("float", Lit("nan" if math.isnan(v) else "inf" if v > 0 else "-inf"))
    return Lit(v)


def ints(values: list[int] | tuple[int, ...]) -> tuple[Expr, ...]:
    return tuple(Lit(v) for v in values)


def binop(op: str, left: Expr, right: Expr) -> BinOp:
    return BinOp(op, left, right)


# ---- identifiers ----
def is_identifier(name: str) -> bool:
    return name.isidentifier() and name.isascii() and not keyword.iskeyword(name) and not keyword.issoftkeyword(name)


# ---- printing ----
def string(s: str) -> str:
    """A double-quoted Python string literal for any text: escapes backslashes, quotes and every character
    that is not printable (newlines, line separators, bidi controls, NUL), so it stays on one line."""
    out = ['"']
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch.isprintable():
            out.append(ch)
        else:
            n = ord(ch)
            out.append(f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}")
    out.append('"')
    return "".join(out)


def comment_text(s: str) -> str:
    """Text safe inside a `#` comment: one line, printable characters only."""
    return "".join(ch if ch.isprintable() else string(ch)[1:-1] for ch in s.replace("\n", " "))


def _number(v: int | float) -> str:
    if isinstance(v, float):
        return repr(v)  # finite here; `lit` turns inf/nan into float("inf")
    return str(v)


def _is_simple_power_operand(e: Expr) -> bool:
    """ruff format hugs `**` when both operands are names, numbers or attribute chains."""
    if isinstance(e, Unary) and e.op == "-":
        return _is_simple_power_operand(e.operand)
    if isinstance(e, Lit):
        return isinstance(e.value, (int, float)) and not isinstance(e.value, bool)
    if isinstance(e, Attr):
        return _is_simple_power_operand(e.obj) or isinstance(e.obj, Name)
    return isinstance(e, Name)


def _is_simple_slice_part(e: Expr | None) -> bool:
    if e is None or isinstance(e, (Name, Lit)):
        return True
    return isinstance(e, Unary) and e.op == "-" and _is_simple_slice_part(e.operand)


def src(e: Expr, min_prec: int = 0) -> str:
    """Python source of `e`, parenthesised if its precedence is below `min_prec`."""
    text = _src(e)
    return f"({text})" if e.prec < min_prec else text


def _src(e: Expr) -> str:
    if isinstance(e, Name):
        return e.id
    if isinstance(e, Lit):
        v = e.value
        if isinstance(v, str):
            return string(v)
        if v is None or isinstance(v, bool):
            return repr(v)
        return _number(v)
    if isinstance(e, Attr):
        obj = src(e.obj, ATOM)
        if isinstance(e.obj, Lit) and isinstance(e.obj.value, int):
            obj = f"({obj})"
        return f"{obj}.{e.name}"
    if isinstance(e, Call):
        parts = [src(a) for a in e.args] + [f"{k}={src(v)}" for k, v in e.kwargs]
        return f"{src(e.fn, ATOM)}({', '.join(parts)})"
    if isinstance(e, Index):
        items = ", ".join(_slice(i) if isinstance(i, Slice) else src(i) for i in e.items) or "()"
        return f"{src(e.obj, ATOM)}[{items}]"
    if isinstance(e, Slice):
        return _slice(e)
    if isinstance(e, BinOp):
        p = e.prec
        if e.op == "**":
            left, right = src(e.left, p + 1), src(e.right, UNARY)
            hug = _is_simple_power_operand(e.left) and _is_simple_power_operand(e.right)
            return f"{left}**{right}" if hug else f"{left} ** {right}"
        return f"{src(e.left, p)} {e.op} {src(e.right, p + 1)}"
    if isinstance(e, Unary):
        if e.op == "not":
            return f"not {src(e.operand, NOT)}"
        return f"{e.op}{src(e.operand, UNARY)}"
    if isinstance(e, IfExp):
        return f"{src(e.body, TERNARY + 1)} if {src(e.test, TERNARY + 1)} else {src(e.orelse, TERNARY)}"
    if isinstance(e, TupleExpr):
        inner = ", ".join(src(i) for i in e.items) + ("," if len(e.items) == 1 else "")
        return inner if e.bare else f"({inner})"
    if isinstance(e, ListComp):
        return f"[{src(e.elt)} for {e.var} in {src(e.iterable)}]"
    if isinstance(e, ListExpr):
        return "[" + ", ".join(src(i) for i in e.items) + "]"
    if isinstance(e, DictExpr):
        return "{" + ", ".join(f"{src(k)}: {src(v)}" for k, v in e.items) + "}"
    if isinstance(e, FString):
        body = []
        for part in e.parts:
            if isinstance(part, str):
                body.append(string(part)[1:-1].replace("{", "{{").replace("}", "}}"))
            else:
                body.append("{" + src(part) + "}")
        return 'f"' + "".join(body) + '"'
    if isinstance(e, Ref):
        raise AssertionError(f"unresolved reference to node {e.node}")
    raise TypeError(f"cannot print {e!r}")


def _slice(s: Slice) -> str:
    parts = [s.lo, s.hi] + ([s.step] if s.step is not None else [])
    if all(_is_simple_slice_part(p) for p in parts):
        return ":".join("" if p is None else src(p) for p in parts)
    # complex bounds: ruff spaces the colons like a binary operator, and omits the space by an empty side
    texts = ["" if p is None else src(p) for p in parts]
    out = texts[0]
    for t in texts[1:]:
        out = (out + " :" if out else ":") + (" " + t if t else "")
    return out


# ---- statements, split as `ruff format --line-length 120` would split them ----
MAX_LINE = 120


def statement(indent: str, prefix: str, e: Expr, suffix: str = "", comment: str | None = None,
              offset: int = 0) -> list[str]:
    """`indent + prefix + e + suffix  # comment` in lines no longer than MAX_LINE - offset (offset: indent the
    lines get later). Too long: the comment moves above; a call's arguments go on one indented line, else one
    per line; a long f-string argument becomes implicitly concatenated pieces; other values are parenthesised."""
    limit = MAX_LINE - offset
    note = f"  # {comment_text(comment)}" if comment else ""
    code = indent + prefix + src(e) + suffix
    if len(code) + len(note) <= limit:
        return [code + note]
    above = [indent + "# " + comment_text(comment)] if comment else []
    if len(code) <= limit:
        return [*above, code]
    inner = indent + "    "
    if isinstance(e, Call) and (e.args or e.kwargs):
        args = [src(a) for a in e.args] + [f"{k}={src(v)}" for k, v in e.kwargs]
        head = indent + prefix + src(e.fn, ATOM) + "("
        if len(inner + ", ".join(args)) <= limit:
            return [*above, head, inner + ", ".join(args), indent + ")" + suffix]
        if len(args) == 1 and e.args and isinstance(e.args[0], FString):
            pieces = _fstring_pieces(e.args[0], limit - len(inner))
            return [*above, head, *[inner + p for p in pieces], indent + ")" + suffix]
        return [*above, head, *[inner + a + "," for a in args], indent + ")" + suffix]
    if isinstance(e, TupleExpr) and not e.bare:
        return [*above, indent + prefix + "(", *[inner + src(i) + "," for i in e.items], indent + ")" + suffix]
    if prefix and len(inner + src(e)) <= limit:
        return [*above, indent + prefix + "(", inner + src(e), indent + ")" + suffix]
    return [*above, code]


def _fstring_pieces(f: FString, width: int) -> list[str]:
    """An f-string as consecutive literals each at most `width` long where possible (split between parts)."""
    chunks: list[list[str | Expr]] = [[]]
    for part in f.parts:
        trial = chunks[-1] + [part]
        if chunks[-1] and len(_piece(trial)) > width:
            chunks.append([part])
        else:
            chunks[-1] = trial
    return [_piece(c) for c in chunks]


def _piece(parts: list[str | Expr]) -> str:
    if all(isinstance(p, str) for p in parts):
        return string("".join(parts))  # type: ignore[arg-type]
    return src(FString(tuple(parts)))


def signature(indent: str, head: str, params: list[str], tail: str) -> list[str]:
    """`def f(a, b) -> R:` split like ruff format when too long."""
    line = f"{indent}{head}({', '.join(params)}){tail}"
    if len(line) <= MAX_LINE:
        return [line]
    inner = indent + "    "
    if len(inner + ", ".join(params)) <= MAX_LINE:
        return [f"{indent}{head}(", inner + ", ".join(params), f"{indent}){tail}"]
    return [f"{indent}{head}(", *[f"{inner}{p}," for p in params], f"{indent}){tail}"]


def docstring(text: str, indent: str) -> list[str]:
    """A triple-quoted docstring for any text: escaped like a string literal, long lines wrapped."""
    width = MAX_LINE - len(indent) - 3
    lines = []
    for line in text.split("\n"):
        esc = string(line)[1:-1].replace('\\"', '"').replace('"""', '\\"\\"\\"').rstrip()
        lines += textwrap.wrap(esc, width, break_long_words=False, break_on_hyphens=False) or [""]
    if lines[-1].endswith('"'):
        lines[-1] = lines[-1][:-1] + '\\"'
    body = [f'"""{lines[0]}"""'] if len(lines) == 1 else [f'"""{lines[0]}', *lines[1:], '"""']
    return [indent + b if b else "" for b in body]


# ---- tree utilities (generic over the dataclass fields, which are in evaluation order) ----
def _field_values(e: Expr) -> list[Any]:
    return [getattr(e, f.name) for f in fields(e)] if is_dataclass(e) else []


def children(e: Expr) -> list[Expr]:
    """Direct subexpressions, in evaluation order (receivers before arguments, left before right)."""
    out: list[Expr] = []

    def collect(v: Any) -> None:
        if isinstance(v, Expr):
            out.append(v)
        elif isinstance(v, tuple):
            for x in v:
                collect(x)
    for v in _field_values(e):
        collect(v)
    return out


def refs(e: Expr) -> list[str]:
    """Node references in evaluation order."""
    if isinstance(e, Ref):
        return [e.node]
    return [r for c in children(e) for r in refs(c)]


def replace(e: Expr, fn: Callable[[Expr], Expr | None]) -> Expr:
    """Rebuild `e` bottom-up, replacing each subexpression for which `fn` returns an expression."""
    new = fn(e)
    if new is not None:
        return new

    def map_value(v: Any) -> Any:
        if isinstance(v, Expr):
            return replace(v, fn)
        if isinstance(v, tuple):
            return tuple(map_value(x) for x in v)
        return v
    if not is_dataclass(e) or not children(e):
        return e
    return dataclasses.replace(e, **{f.name: map_value(getattr(e, f.name)) for f in fields(e)})  # type: ignore[misc]


def substitute(e: Expr, mapping: dict[str, Expr]) -> Expr:
    """Replace `Ref`s whose node is in `mapping`."""
    return replace(e, lambda x: mapping.get(x.node) if isinstance(x, Ref) else None)


def mentions(e: Expr, target: Expr) -> bool:
    return e == target or any(mentions(c, target) for c in children(e))
