"""The pieces of generated Python below the level of a function: statements (`Stmt`, `Var`), sizes and conditions
as expressions, identifiers (`Names`, `camel`), `self.` paths, and the few facts about an expression the function
generator asks (is it trivial, does it move axes, did the spec name this value).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import sympy

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.pysrc import Expr, Ref
from nnspec.compiler.ir import Graph, Node, TensorType
from nnspec.compiler.ops import OPS
from nnspec.compiler.ops.registry import Effect
from nnspec.errors import InternalError, SpecError


@dataclass(frozen=True)
class Var(Expr):
    """The variable of a node or temporary as an assignment target or loop-carried read; never inlined."""

    node: str


@dataclass
class Stmt:
    """One statement of a generated function: lines of parts (generated text or expressions) with indents."""

    lines: list[tuple[int, tuple[str | Expr, ...]]]
    defines: str | None = None          # node or temporary whose variable the first line assigns
    comment: str | None = None
    pinned: bool = False                # an assignment that is never inlined (shape comments, loop inits)
    inline_into: bool = True            # may single-use values move into this statement
    evaluates: list[str] = field(default_factory=list)  # nodes computed by this statement

    @property
    def value(self) -> Expr | None:
        """The right-hand side when the statement is exactly `var = value`."""
        if self.defines is not None and len(self.lines) == 1:
            parts = self.lines[0][1]
            if len(parts) == 3 and parts[0] == Var(self.defines) and parts[1] == " = ":
                return parts[2]  # type: ignore[return-value]
        return None

    def exprs(self) -> list[Expr]:
        return [p for _, parts in self.lines for p in parts if isinstance(p, Expr)]

    def substituted(self, mapping: dict[str, Expr]) -> Stmt:
        lines = [(ind, tuple(P.substitute(p, mapping) if isinstance(p, Expr) else p for p in parts))
                 for ind, parts in self.lines]
        return Stmt(lines, self.defines, self.comment, self.pinned, self.inline_into, list(self.evaluates))


# ---- sizes and conditions ----
def size_expr(e: sympy.Basic, name_of: Any) -> Expr:
    """A sympy size over dims as Python: `3 * N_EMBD`, `T // 2`, `(H - 16) // 16 + 1`."""
    e = sympy.sympify(e)
    if e.is_Integer:
        return P.Lit(int(e))
    if isinstance(e, sympy.Symbol):
        return name_of(e)
    num, den = sympy.fraction(sympy.together(e.args[0] if isinstance(e, sympy.floor) else e))
    if den != 1:   # an exact division (sizes are integers), or a floor
        return P.binop("//", size_expr(sympy.expand(num), name_of), size_expr(den, name_of))
    if isinstance(e, sympy.floor):
        return size_expr(num, name_of)
    if e.is_Add:
        terms = e.as_ordered_terms()
        out = size_expr(terms[0], name_of)
        for t in terms[1:]:
            negative = t.as_coeff_Mul()[0] < 0
            out = P.binop("-" if negative else "+", out, size_expr(-t if negative else t, name_of))
        return out
    elif e.is_Mul:
        coeff, rest = e.as_coeff_Mul()
        if coeff == -1:
            return P.Unary("-", size_expr(rest, name_of))
        factors = ([P.Lit(int(coeff))] if coeff != 1 else []) + [size_expr(f, name_of)
                                                                 for f in rest.as_ordered_factors()]
        out = factors[0]
        for f in factors[1:]:
            out = P.binop("*", out, f)
        return out
    elif e.is_Pow and e.exp.is_Integer and e.exp > 0:
        return P.binop("**", size_expr(e.base, name_of), P.Lit(int(e.exp)))
    elif isinstance(e, sympy.Mod):
        return P.binop("%", size_expr(e.args[0], name_of), size_expr(e.args[1], name_of))
    elif isinstance(e, (sympy.Min, sympy.Max)):
        return P.call("min" if isinstance(e, sympy.Min) else "max", *[size_expr(a, name_of) for a in e.args])
    raise InternalError(f"cannot generate code for the size {e}")


_RELATIONS = {sympy.Le: "<=", sympy.Lt: "<", sympy.Ge: ">=", sympy.Gt: ">", sympy.Eq: "==", sympy.Ne: "!="}


def condition_expr(e: sympy.Basic, name_of: Any) -> Expr:
    """A sympy relation or boolean over sizes as a Python condition."""
    for kind, op in _RELATIONS.items():
        if isinstance(e, kind):
            return P.binop(op, size_expr(e.lhs, name_of), size_expr(e.rhs, name_of))
    if isinstance(e, (sympy.And, sympy.Or)):
        parts = [condition_expr(a, name_of) for a in sorted(e.args, key=str)]
        out = parts[0]
        for p in parts[1:]:
            out = P.binop("and" if isinstance(e, sympy.And) else "or", out, p)
        return out
    if isinstance(e, sympy.Not):
        return P.Unary("not", condition_expr(e.args[0], name_of))
    raise InternalError(f"cannot generate code for the condition {e}")


# ---- names ----
def camel(name: str) -> str:
    """`layer` -> `Layer`, `self_attention` -> `SelfAttention`, `mlp_1` -> `Mlp1`."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) or "Block"


class Names:
    """Hands out unique identifiers in one namespace, never a keyword or a Python builtin."""

    def __init__(self, reserved: set[str] | frozenset[str] = frozenset()) -> None:
        self.taken: set[str] = set(reserved)

    def fresh(self, hint: str) -> str:
        base = re.sub(r"\W", "_", hint).strip("_") if not P.is_identifier(hint) else hint
        if not base or not P.is_identifier(base) or not base.isascii():
            base = "v_" + re.sub(r"[^0-9A-Za-z_]", "_", hint)
        if base in P.BUILTIN_NAMES:
            base += "_"
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name


def refuse(what: str, name: str, why: str, span: Any = None) -> SpecError:
    return SpecError("E004", f"{what} '{name}' cannot be used in generated PyTorch code: {why}; choose another name",
                     span)


def member(path: str) -> Expr:
    """`self.h.attn.c_attn` for a dotted path."""
    e: Expr = P.Name("self")
    for part in path.split("."):
        e = P.Attr(e, part)
    return e


def owns_block(node: Node) -> bool:
    """Does the node run a block template (`call`, `repeat`, `scan`: the ops owning a scope of state)?"""
    return OPS[node.op].effect is Effect.OWNS_STATE


def holds_state(node: Node) -> bool:
    """Is the node a parameter or buffer: module state at a spec path (`self.h.attn.c_attn.weight`)?"""
    return OPS[node.op].has("state")


def spec_named(graph: Graph, node: Node) -> bool:
    """Does the node carry a name the spec's author gave it (a variable), not one nnspec derived from an op,
    a scope or an input (`einsum_1`, `c_attn`, `k_1`)?"""
    stems = {node.op}
    if owns_block(node):
        stems.add(node.attrs["scope"])
    for i in node.inputs:
        stems.add(i)
        if holds_state(graph[i]):
            stems.add(graph[i].attrs["path"].split(".")[0])
    return not any(node.name == s or re.fullmatch(re.escape(s) + r"_\d+", node.name) for s in stems)


def vars_of(e: Expr) -> list[str]:
    if isinstance(e, Var):
        return [e.node]
    return [v for c in P.children(e) for v in vars_of(c)]


def trivial(e: Expr) -> bool:
    """Values cheap and pure enough to repeat at each use rather than keep in a variable."""
    if isinstance(e, (P.Name, P.Lit, Ref)):
        return True
    if isinstance(e, P.Attr):
        return trivial(e.obj)
    if isinstance(e, P.TupleExpr):  # a tuple of values (a scan's result), taken apart by getitem
        return all(trivial(i) for i in e.items)
    if isinstance(e, P.Call):  # float("-inf")
        return e.fn == P.Name("float") and len(e.args) == 1 and isinstance(e.args[0], P.Lit) and not e.kwargs
    return False


MOVES_AXES = frozenset({"reshape", "view", "permute", "transpose", "movedim", "flatten", "unflatten"})


def moves_axes(e: Expr) -> bool:
    """Does the expression reshape, permute or contract (`@`, `torch.einsum`)?"""
    if isinstance(e, P.Call) and ((isinstance(e.fn, P.Attr) and e.fn.name in MOVES_AXES) or
                                  e.fn == P.dotted("torch.einsum")):
        return True
    if isinstance(e, P.BinOp) and e.op == "@":
        return True
    return any(moves_axes(c) for c in P.children(e))


def shape_comment(t: Any) -> str | None:
    return "(" + ", ".join(t.names) + ")" if isinstance(t, TensorType) else None

