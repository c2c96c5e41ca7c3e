"""The syntax tree of the expression language. Every node carries the span of its source text."""

from __future__ import annotations

from dataclasses import dataclass, field

from nnspec.spec.source import Span


@dataclass(eq=False)
class Node:
    span: Span = field(repr=False, kw_only=True)


# ---- axes in annotations and types ----
@dataclass(eq=False)
class AxisName(Node):
    name: str


@dataclass(eq=False)
class AxisInt(Node):
    value: int


@dataclass(eq=False)
class AxisGroup(Node):
    items: list[AxisName | AxisInt]


@dataclass(eq=False)
class AxisExpr(Node):
    """`(2 * d)`: an axis given by a size expression, named by its value as a size argument's axis is."""
    expr: Expr


AxisItem = AxisName | AxisInt | AxisGroup | AxisExpr


# ---- expressions ----
@dataclass(eq=False)
class Num(Node):
    value: int | float


@dataclass(eq=False)
class Str(Node):
    value: str


@dataclass(eq=False)
class Name(Node):
    id: str


@dataclass(eq=False)
class BinOp(Node):
    op: str
    left: Expr
    right: Expr


@dataclass(eq=False)
class Unary(Node):
    op: str
    operand: Expr


@dataclass(eq=False)
class Compare(Node):
    op: str
    left: Expr
    right: Expr


@dataclass(eq=False)
class BoolOp(Node):
    op: str  # "and" | "or"
    left: Expr
    right: Expr


@dataclass(eq=False)
class Not(Node):
    operand: Expr


@dataclass(eq=False)
class Ternary(Node):
    cond: Expr
    then: Expr
    orelse: Expr


@dataclass(eq=False)
class Kwarg(Node):
    name: str
    value: Expr


@dataclass(eq=False)
class Call(Node):
    func: Expr
    args: list[Expr]
    kwargs: list[Kwarg]


@dataclass(eq=False)
class Annotate(Node):
    value: Expr
    axes: list[AxisItem]


@dataclass(eq=False)
class Attr(Node):
    value: Expr
    name: str


@dataclass(eq=False)
class Tuple(Node):
    items: list[Expr]


Expr = Num | Str | Name | BinOp | Unary | Compare | BoolOp | Not | Ternary | Call | Annotate | Attr | Tuple


# ---- statements ----
@dataclass(eq=False)
class Assign(Node):
    targets: list[Expr]  # each a Name or Annotate(Name, axes)
    value: Expr


@dataclass(eq=False)
class AugAssign(Node):
    target: Expr
    op: str
    value: Expr


@dataclass(eq=False)
class Return(Node):
    values: list[Expr]


Stmt = Assign | AugAssign | Return


# ---- other entry points ----
@dataclass(eq=False)
class TypeExpr(Node):
    dtype: str
    dtype_span: Span
    axes: list[AxisItem]


@dataclass(eq=False)
class Param(Node):
    name: str
    axes: list[AxisItem] | None
    default: Expr | None


@dataclass(eq=False)
class Signature(Node):
    name: str
    params: list[Param]


def names_in(expr: Node) -> list[Name]:
    """Every Name read by an expression, in source order (for dependency analysis of dims)."""
    out: list[Name] = []

    def walk(n: object) -> None:
        if isinstance(n, Name):
            out.append(n)
        elif isinstance(n, Node):
            for value in vars(n).values():
                if isinstance(value, list):
                    for v in value:
                        walk(v)
                else:
                    walk(value)

    walk(expr)
    return out
