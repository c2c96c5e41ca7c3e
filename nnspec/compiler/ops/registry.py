"""The op table: one `OpDef` per graph op (attribute schema, shape+dtype rule, FLOPs, docs, glyph),
and the table of surface functions (`linear(...)` in a spec) that build those ops.

Rules raise `SpecError` without a span; the elaborator attaches the span of the user's expression.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sympy

from nnspec.compiler.ir import DType, TensorType, Type
from nnspec.compiler.sizes import Sizes
from nnspec.errors import InternalError, SpecError

if TYPE_CHECKING:
    from nnspec.compiler.elaborate import Builder
    from nnspec.spec import ast

Rule = Callable[[list[Type], dict[str, Any], Sizes], Type]
Flops = Callable[[list[Type], Type, dict[str, Any]], sympy.Expr]


def _no_flops(ins: list[Type], out: Type, attrs: dict[str, Any]) -> sympy.Expr:
    return sympy.Integer(0)


@dataclass
class OpDef:
    name: str
    family: str          # source | elementwise | reduce | normalize | contract | shape | nn | structure
    doc: str
    rule: Rule
    attrs: dict[str, type | tuple[type, ...]] = field(default_factory=dict)
    optional_attrs: frozenset[str] = frozenset()
    arity: int | tuple[int, int] | None = None   # exact, (min, max), or None for any
    flops: Flops = _no_flops
    glyph: str = ""      # how a circuit diagram draws it
    flops_doc: str = "0"

    def infer(self, in_types: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
        self.check_attrs(attrs)
        n = len(in_types)
        lo, hi = (self.arity, self.arity) if isinstance(self.arity, int) else (self.arity or (0, 1 << 30))
        if not lo <= n <= hi:
            raise InternalError(f"op {self.name} built with {n} inputs")
        return self.rule(in_types, attrs, sizes)

    def check_attrs(self, attrs: dict[str, Any]) -> None:
        for key, kind in self.attrs.items():
            if key not in attrs:
                if key in self.optional_attrs:
                    continue
                raise InternalError(f"op {self.name} built without attribute {key!r}")
            if not isinstance(attrs[key], kind):
                raise InternalError(f"op {self.name} attribute {key!r} is {type(attrs[key]).__name__}")
        extra = set(attrs) - set(self.attrs)
        if extra:
            raise InternalError(f"op {self.name} given unknown attributes {sorted(extra)}")


OPS: dict[str, OpDef] = {}

Builtin = Callable[["Builder", "ast.Call"], Any]


@dataclass
class BuiltinDef:
    name: str
    fn: Builtin
    signature: str
    doc: str


BUILTINS: dict[str, BuiltinDef] = {}


def op(name: str, family: str, *, doc: str, attrs: dict[str, type | tuple[type, ...]] | None = None,
       optional: tuple[str, ...] = (), arity: int | tuple[int, int] | None = None, flops: Flops = _no_flops,
       flops_doc: str = "0", glyph: str = "") -> Callable[[Rule], Rule]:
    def register(rule: Rule) -> Rule:
        if name in OPS:
            raise InternalError(f"op {name} registered twice")
        OPS[name] = OpDef(name, family, doc, rule, attrs or {}, frozenset(optional), arity, flops, glyph,
                          flops_doc)
        return rule
    return register


def builtin(name: str, signature: str, doc: str) -> Callable[[Builtin], Builtin]:
    def register(fn: Builtin) -> Builtin:
        if name in BUILTINS:
            raise InternalError(f"builtin {name} registered twice")
        BUILTINS[name] = BuiltinDef(name, fn, signature, doc)
        return fn
    return register


# ---- helpers shared by the rules ----
def tensor(t: Type, what: str) -> TensorType:
    if not isinstance(t, TensorType):
        raise SpecError("E026", f"{what} must be a tensor, got a tuple of {len(t)}")
    return t


def need_float(t: TensorType, what: str) -> None:
    if not t.dtype.is_float:
        raise SpecError("E013", f"{what} expects a floating-point tensor, got {t}")


def need_same_dtype(ts: list[TensorType], what: str) -> None:
    """Operands that torch multiplies in one kernel (matrix products, convolutions, norms with their weights,
    attention) must share a dtype: torch does not promote them, so the checker does not either."""
    dtypes = list(dict.fromkeys(t.dtype.value for t in ts))
    if len(dtypes) > 1:
        raise SpecError("E013", f"{what} needs its operands in one dtype, got {' and '.join(dtypes)}; cast one "
                        f"(cast(x, \"{dtypes[-1]}\")), or convert the whole model with --dtype")


def need_same_size(sizes: Sizes, a: sympy.Expr, b: sympy.Expr, message: str) -> None:
    """Raise E012 when two sizes are provably different; an undecided equality becomes a run-time guard."""
    verdict = sizes.equal(a, b)
    if verdict is False:
        raise SpecError("E012", message)
    if verdict is None:
        sizes.assume(sympy.Eq(a, b), f"{a} == {b}")


def find_axis(t: TensorType, name: str, what: str) -> int:
    if name not in t.names:
        raise SpecError("E017", f"{what}: no axis '{name}' in {t}")
    return t.index(name)


PROMOTION = [DType.bool, DType.int32, DType.int64, DType.bfloat16, DType.float16, DType.float32]


def promote(a: DType, b: DType) -> DType:
    if {a, b} == {DType.bfloat16, DType.float16}:
        return DType.float32
    return max(a, b, key=PROMOTION.index)
