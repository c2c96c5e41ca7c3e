"""The contract between the elaborator and the spec language's built-in functions (`linear(...)`, `softmax(...)`):
the table a builtin registers in, and `Surface`, the narrow part of the `Builder` a builtin may use to read its
arguments, make parameters and emit graph ops.

The table lives with the elaborator, not in `compiler/builtins/`: the elaborator looks names up in it, and the
builtins package imports the elaborator, so a table inside that package would make the two import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from nnspec.compiler.elaborate.values import TensorValue
from nnspec.compiler.ir import Axis, DType, Graph, TensorType
from nnspec.compiler.sizes import Sizes
from nnspec.errors import InternalError
from nnspec.spec import ast
from nnspec.spec.load import BlockDecl
from nnspec.spec.source import Span


class Surface(Protocol):
    """What a builtin may ask of the graph it is building (`Builder` provides it)."""

    sizes: Sizes
    graph: Graph
    blocks: dict[str, BlockDecl]   # the spec's blocks, by name
    params: dict[str, str]         # parameter path in this scope -> its node

    # ---- reading arguments ----
    def eval(self, expr: ast.Expr) -> Any: ...
    def tensor(self, expr: ast.Expr) -> TensorValue: ...
    def type_of(self, v: TensorValue) -> TensorType: ...
    def static(self, expr: ast.Expr, what: str) -> Any: ...
    def number(self, expr: ast.Expr, what: str) -> float: ...
    def flag(self, expr: ast.Expr, what: str) -> bool: ...
    def size(self, expr: ast.Expr, what: str) -> Axis: ...
    def ints(self, expr: ast.Expr, n: int, what: str) -> tuple[int, ...]: ...
    def axis_name(self, expr: ast.Expr) -> str: ...
    def axis_names(self, expr: ast.Expr) -> list[str]: ...
    def axis(self, name: str, span: Span) -> Axis: ...

    # ---- emitting ops ----
    def emit(self, op: str, inputs: list[str], attrs: dict[str, Any], span: Span | None,
             hint: str | None = None, record: bool = True) -> TensorValue: ...
    def elementwise(self, op: str, operands: list[Any], span: Span) -> TensorValue: ...
    def matmul(self, a: Any, b: Any, span: Span) -> TensorValue: ...

    # ---- parameters and their scopes ----
    def scope_kwarg(self, call: ast.Call) -> str | None: ...
    def claim_scope(self, explicit: str | None, default: str, span: Span) -> str: ...
    def param(self, scope: str, local: str, axes: tuple[Axis, ...], init: tuple[Any, ...], span: Span,
              dtype: DType = DType.float32) -> TensorValue: ...
    def buffer(self, scope: str, local: str, axes: tuple[Axis, ...], init: tuple[Any, ...], span: Span,
               dtype: DType = DType.float32, persistent: bool = True) -> TensorValue: ...

    # ---- blocks (repeat, scan) ----
    def block_binding(self, decl: BlockDecl, call: ast.Call, index: str | None = None,
                      count: int = 1) -> tuple[list[str], list[Graph], dict[str, str]]: ...
    def in_caller_terms(self, op: str, inputs: list[str], attrs: dict[str, Any], span: Span,
                        to_caller: dict[str, str], hint: str | None) -> TensorValue: ...
    def template(self, decl: BlockDecl, args: list[tuple[str, Any]], span: Span) -> Graph: ...


Builtin = Callable[[Surface, ast.Call], Any]


@dataclass
class BuiltinDef:
    name: str
    fn: Builtin
    signature: str
    doc: str


BUILTINS: dict[str, BuiltinDef] = {}


def builtin(name: str, signature: str, doc: str) -> Callable[[Builtin], Builtin]:
    def register(fn: Builtin) -> Builtin:
        if name in BUILTINS:
            raise InternalError(f"builtin {name} registered twice")
        BUILTINS[name] = BuiltinDef(name, fn, signature, doc)
        return fn
    return register
