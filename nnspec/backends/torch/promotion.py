"""The dtype torch gives a pointwise op's result, worked out without torch (code generation needs none).

An emitter writes `.to(dtype)` after a binary op, `where` or `straight_through` only where torch's own result dtype
differs from the one the spec's type rules give. Torch's dtype is that of `torch.result_type` over the operands
(ATen's `ResultTypeState`): operands rank by priority, a tensor with dimensions over a zero-dimensional tensor
over a Python number, and a lower-priority operand counts only when it is of a higher category (bool < integer <
floating) than what outranks it; a Python float counts as the default dtype (float32), an int as int64. Then
comparisons and logical ops give bool, and true division of integers the default float dtype.
`tests/test_no_torch.py` compares every case the emitters can meet with torch itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from nnspec.backends.torch.pysrc import Expr, Lit
from nnspec.compiler.ir import DType, TensorType
from nnspec.compiler.ops.elementwise import Pointwise

DEFAULT_FLOAT = DType.float32      # torch.get_default_dtype() in a generated file (it never sets another)
_NUMBER_DTYPES = {bool: DType.bool, int: DType.int64, float: DEFAULT_FLOAT}
_INTEGRAL = (DType.int32, DType.int64)
# torch functions that divide in floating point whatever the operands (without a rounding_mode)
_TRUE_DIVISION = frozenset({"torch.div", "torch.true_divide"})

TENSOR, ZERO_DIM, NUMBER = 2, 1, 0   # priorities


@dataclass(frozen=True)
class Operand:
    """What torch's type promotion sees of one operand: its dtype and whether it is a tensor with dimensions, a
    zero-dimensional tensor or a Python number."""

    dtype: DType
    priority: int


def operand(e: Expr, t: TensorType) -> Operand:
    """The operand an emitter's expression `e` of type `t` is at run time: a literal stays a Python number."""
    if isinstance(e, Lit) and not isinstance(e.value, str):
        return Operand(_NUMBER_DTYPES[type(e.value)], NUMBER)
    return Operand(t.dtype, TENSOR if t.rank else ZERO_DIM)


def _category(d: DType | None) -> int:
    return -1 if d is None else 0 if d == DType.bool else 1 if d in _INTEGRAL else 2


def promote_types(a: DType, b: DType) -> DType:
    """`torch.promote_types` on the dtypes the IR has."""
    if a == b:
        return a
    ca, cb = _category(a), _category(b)
    if ca != cb:
        return a if ca > cb else b
    if ca == 1:
        return DType.int64
    return DType.float32 if DType.float32 in (a, b) or {a, b} == {DType.float16, DType.bfloat16} else a


def _promote(a: DType | None, b: DType | None) -> DType | None:
    return b if a is None else a if b is None else promote_types(a, b)


def _combine(higher: DType | None, lower: DType | None) -> DType | None:
    """ATen's `combine_categories`: a lower-priority dtype counts only when of a higher category."""
    if _category(higher) == 2:
        return higher
    if higher == DType.bool or _category(lower) == 2:
        return _promote(higher, lower)
    return higher if higher is not None else lower


def result_type(*operands: Operand) -> DType:
    """`torch.result_type` over the operands."""
    by_priority: dict[int, DType | None] = {TENSOR: None, ZERO_DIM: None, NUMBER: None}
    for o in operands:
        by_priority[o.priority] = _promote(by_priority[o.priority], o.dtype)
    got = _combine(by_priority[TENSOR], _combine(by_priority[ZERO_DIM], by_priority[NUMBER]))
    assert got is not None, "an op with no operand"
    return got


def pointwise_result(row: Pointwise, *operands: Operand) -> DType:
    """The dtype of torch's result of the op in `row` (its torch function) on these operands."""
    if row.returns_bool:
        return DType.bool
    got = result_type(*operands)
    if row.torch in _TRUE_DIVISION and not dict(row.torch_kwargs).get("rounding_mode") and _category(got) < 2:
        return DEFAULT_FLOAT
    return got
