"""The values a spec expression evaluates to while elaborating: a tensor (a graph node), a function (a builtin or a
block), a tuple of values, or a static value known when the spec is checked (bool, int, float, str, sympy size)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TensorValue:
    node: str


@dataclass(frozen=True)
class FuncRef:
    name: str  # a builtin or a block


@dataclass(frozen=True)
class TupleValue:
    items: tuple[Any, ...]


def kind_of(value: Any) -> str:
    if isinstance(value, TensorValue):
        return "a tensor"
    if isinstance(value, FuncRef):
        return f"the function '{value.name}'"
    if isinstance(value, TupleValue):
        return f"a tuple of {len(value.items)}"
    return f"the value {value!r}"
