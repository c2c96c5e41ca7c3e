"""The op table: one `OpDef` per graph op (attribute schema, shape+dtype rule, FLOPs, docs, glyph). The surface
functions that build these ops (`linear(...)` in a spec) are the frontend's (`compiler/elaborate/surface.py`).

Rules raise `SpecError` without a span; the elaborator attaches the span of the user's expression.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import sympy

from nnspec.compiler.ir import OP_TABLE, DType, TensorType, Type
from nnspec.compiler.sizes import Sizes
from nnspec.errors import InternalError, SpecError

Rule = Callable[[list[Type], dict[str, Any], Sizes], Type]
Flops = Callable[[list[Type], Type, dict[str, Any]], sympy.Expr]


def _no_flops(ins: list[Type], out: Type, attrs: dict[str, Any]) -> sympy.Expr:
    return sympy.Integer(0)


class Effect(str, Enum):
    """What running an op does besides computing its result: the one question DCE, CSE, fusion, reordering and the
    backends ask (`OpDef.is_impure`, `Node.is_impure`)."""

    PURE = "pure"              # a function of its inputs: may be merged with an equal node, moved, or dropped unused
    RANDOM = "random"          # draws random numbers (dropout): never merged or reordered; dropped when unused
    STATEFUL = "stateful"      # updates state as it runs (batchnorm's running statistics): never merged, moved, dropped
    LEAF = "leaf"              # a value supplied from outside the graph (argument, parameter, buffer): each is distinct
    OWNS_STATE = "owns_state"  # runs a block holding parameters (call, repeat, scan): kept, never merged or moved


# The tags an op may carry, each with what it promises. An op's tags are declared with its definition; passes,
# transforms, cost and backends ask `with_trait(tag)` / `OPS[name].has(tag)` and never keep op-name lists.
TRAITS: dict[str, str] = {
    "pointwise": "each result element is a function of the same-position operand elements (broadcast by name): "
                 "fusable into one elementwise kernel",
    "activation": "a unary pointwise nonlinearity f(x) (relu, gelu...): may ride as a matmul epilogue",
    "epilogue": "cheap enough for a matmul kernel to apply to each output tile before writing it (activations, "
                "dropout, cast, neg, abs, clamp; a binary one with a constant second operand: + - * /)",
    "commutative": "a binary op whose operands may be swapped",
    "norm": "normalises its input with learned scale (and bias): layernorm, rmsnorm, batchnorm",
    "row_norm": "a norm over one axis of each row, independent across rows (layernorm, rmsnorm): fusable with a "
                "residual add, and rotation-invariant where SliceGPT needs it",
    "view": "moves, picks or relabels elements without arithmetic: costs no FLOPs and no new activation memory",
    "matmul": "a contraction that runs as a matrix product (linear, einsum, conv)",
    "keeps_float32": "computes in float32 under --dtype bf16/fp16 (reductions, norms, softmax): low precision loses "
                     "too much here",
    "source": "takes no tensor operands: makes a value from attributes (constants, tables, masks, leaves)",
    "state": "a parameter or buffer: module state at attribute `path`, in the state dict (a buffer when persistent)",
    "float_source": "a source that computes floats from attributes (a table, a fill): under --dtype it is cast",
    "costly_source": "a source built with real arithmetic (a sin/cos table), unlike a leaf, fill, range or mask: work",
    "structure": "calls a block or picks a tuple member: Python control flow in a backend, no kernel of its own",
}


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
    effect: Effect = Effect.PURE
    traits: frozenset[str] = frozenset()

    def has(self, trait: str) -> bool:
        if trait not in TRAITS:
            raise InternalError(f"unknown op trait {trait!r}")
        return trait in self.traits

    @property
    def is_impure(self) -> bool:
        """Anything but a pure function of its inputs: never merged with an equal node or reordered."""
        return self.effect is not Effect.PURE

    @property
    def removable(self) -> bool:
        """May be deleted when nothing uses its result: pure ops, and random ones (an unused draw changes nothing
        a caller can observe beyond the random stream, which the spec does not promise)."""
        return self.effect in (Effect.PURE, Effect.RANDOM)

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


OPS: dict[str, OpDef] = OP_TABLE   # the IR holds the table so `Node.is_impure()` can read it


def with_trait(*tags: str) -> frozenset[str]:
    """The names of the ops that carry every one of `tags`."""
    for tag in tags:
        if tag not in TRAITS:
            raise InternalError(f"unknown op trait {tag!r}")
    return frozenset(name for name, d in OPS.items() if d.traits.issuperset(tags))


def with_effect(*effects: Effect) -> frozenset[str]:
    """The names of the ops whose effect is one of `effects`."""
    return frozenset(name for name, d in OPS.items() if d.effect in effects)


def is_impure(op_name: str) -> bool:
    """See `OpDef.is_impure`."""
    return OPS[op_name].is_impure


def op(name: str, family: str, *, doc: str, attrs: dict[str, type | tuple[type, ...]] | None = None,
       optional: tuple[str, ...] = (), arity: int | tuple[int, int] | None = None, flops: Flops = _no_flops,
       flops_doc: str = "0", glyph: str = "", effect: Effect = Effect.PURE, traits: tuple[str, ...] = ()
       ) -> Callable[[Rule], Rule]:
    unknown = sorted(set(traits) - set(TRAITS))
    if unknown:
        raise InternalError(f"op {name} declares unknown traits {unknown}")

    def register(rule: Rule) -> Rule:
        if name in OPS:
            raise InternalError(f"op {name} registered twice")
        OPS[name] = OpDef(name, family, doc, rule, attrs or {}, frozenset(optional), arity, flops, glyph,
                          flops_doc, effect, frozenset(traits))
        return rule
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
