"""Evaluating a spec expression inside a block: names resolve to variables, dims, options, constants, functions
(builtins and blocks) or axis sizes; arithmetic on tensors emits nodes, arithmetic on static values folds; calls
dispatch to a builtin (the `BUILTINS` table) or a block. Also the typed readers builtins use for their arguments
(a tensor, a number, a flag, a size, axis names)."""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from typing import Any

import sympy

from nnspec.compiler import static
from nnspec.compiler.elaborate.nodes import NodeBuilder
from nnspec.compiler.elaborate.static_eval import CONSTANTS, number_literal, undefined
from nnspec.compiler.elaborate.surface import BUILTINS
from nnspec.compiler.elaborate.values import FuncRef, TensorValue, TupleValue, kind_of
from nnspec.compiler.ir import Axis
from nnspec.compiler.sizes import MAX_SIZE
from nnspec.errors import SpecError
from nnspec.spec import ast
from nnspec.spec.load import BlockDecl
from nnspec.spec.source import Span


class ExpressionBuilder(NodeBuilder, ABC):
    """A graph builder that evaluates expressions."""

    @abstractmethod
    def call_block(self, decl: BlockDecl, call: ast.Call) -> Any:
        """A call of one of the spec's blocks (blocks.py: it needs the statements that build a block's template)."""

    @abstractmethod
    def model_input(self, name: str, span: Span) -> TensorValue:
        """A model input read in this graph (blocks.py: a template takes it as a parameter of its own)."""

    def eval(self, expr: ast.Expr) -> Any:
        method = getattr(self, "_eval_" + type(expr).__name__)
        return method(expr)

    def _eval_Num(self, e: ast.Num) -> Any:
        return number_literal(e)

    def _eval_Str(self, e: ast.Str) -> Any:
        return e.value

    def _eval_Name(self, e: ast.Name) -> Any:
        if e.id in self.vars:
            return self.vars[e.id]
        if e.id in self.el.input_nodes and "block" in self.graph.meta:   # a model input, read inside a block
            return self.model_input(e.id, e.span)
        local = self.local_axis(e.id)
        if local is not None:
            return local
        if e.id in self.el.sizes.declared or e.id in self.el.options or e.id in CONSTANTS:
            return self.el.lookup_static(e.id, e.span, allow_free=False)
        if e.id in BUILTINS or e.id in self.blocks:
            return FuncRef(e.id)
        if e.id in self.el.sizes.free:
            return self.el.sizes.free[e.id]
        if e.id in self.axis_sizes:  # an axis named in this block stands for its size
            return self.axis_sizes[e.id][0]
        candidates = [*self.vars, *self.el.sizes.declared, *self.el.options, *BUILTINS, *self.blocks]
        raise undefined(e.id, e.span, candidates)

    def _eval_BinOp(self, e: ast.BinOp) -> Any:
        return self.binary(e.op, self.eval(e.left), self.eval(e.right), e.span)

    def _eval_Unary(self, e: ast.Unary) -> Any:
        v = self.eval(e.operand)
        if e.op == "+":
            return v
        if isinstance(v, TensorValue):
            return self.emit("neg", [v.node], {}, e.span)
        if isinstance(v, float):
            return -v
        if isinstance(v, (FuncRef, TupleValue)):
            raise SpecError("E026", f"cannot negate {kind_of(v)}", e.span)
        return static.binop("*", -1, v, e.span, self.sizes.concrete)

    def _eval_Compare(self, e: ast.Compare) -> Any:
        a, b = self.eval(e.left), self.eval(e.right)
        if e.op == "in" and (isinstance(a, TensorValue) or not isinstance(b, list)):
            raise SpecError("E026", f"'in' asks whether a list option holds a value known when the spec is checked "
                            f"(i in mlp_only_layers), not {kind_of(a)} in {kind_of(b)}", e.span)
        if isinstance(a, TensorValue) or isinstance(b, TensorValue):
            op = {"==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}[e.op]
            return self.elementwise(op, [a, b], e.span)
        result = static.compare(e.op, self._concrete(a), self._concrete(b), e.span)
        if not isinstance(result, bool):
            raise SpecError("E026", "this comparison depends on a free dim; put it under require:", e.span)
        return result

    def _eval_BoolOp(self, e: ast.BoolOp) -> Any:
        a = self.eval(e.left)
        if isinstance(a, bool):  # static short-circuit, like the condition of `if`
            if (e.op == "and" and not a) or (e.op == "or" and a):
                return a
            b = self.eval(e.right)
            if isinstance(b, bool):
                return b
            return self.elementwise("logical_" + e.op, [a, b], e.span)
        return self.elementwise("logical_" + e.op, [a, self.eval(e.right)], e.span)

    def _eval_Not(self, e: ast.Not) -> Any:
        v = self.eval(e.operand)
        if isinstance(v, bool):
            return not v
        return self.elementwise("logical_not", [v], e.span)

    def _eval_Ternary(self, e: ast.Ternary) -> Any:
        cond = self.eval(e.cond)
        if not isinstance(cond, bool):
            raise SpecError("E026", "the condition of 'if' must be known when the spec is checked (an option or "
                            "a comparison of dims); use where(...) to choose per element", e.cond.span)
        return self.eval(e.then if cond else e.orelse)

    def _eval_Call(self, e: ast.Call) -> Any:
        if isinstance(e.func, ast.Name) and e.func.id not in self.vars and e.func.id not in self.el.options:
            if e.func.id not in BUILTINS and e.func.id not in self.blocks:
                hint = difflib.get_close_matches(e.func.id, [*BUILTINS, *self.blocks], n=1, cutoff=0.6)
                raise SpecError("E016", f"unknown function '{e.func.id}'" +
                                (f"; did you mean '{hint[0]}'?" if hint else ""), e.func.span)
            func: Any = FuncRef(e.func.id)
        else:
            func = self.eval(e.func)
        if isinstance(func, str) and (func in BUILTINS or func in self.blocks):
            func = FuncRef(func)  # a string option naming a function: activation(x)
        if not isinstance(func, FuncRef):
            raise SpecError("E016", f"cannot call {kind_of(func)}", e.func.span)
        if func.name in self.blocks:
            return self.call_block(self.blocks[func.name], e)
        return BUILTINS[func.name].fn(self, e)

    def _eval_Annotate(self, e: ast.Annotate) -> Any:
        value = self.eval(e.value)
        if isinstance(value, TupleValue):   # `sort(x)[1]`: a member of a tuple, counted from 0
            n = len(value.items)
            if len(e.axes) != 1 or not isinstance(e.axes[0], ast.AxisInt):
                raise SpecError("E019", f"a tuple of {n} is indexed by one number from 0 to {n - 1}, as in "
                                "sort(x)[1]", e.span)
            if e.axes[0].value >= n:
                raise SpecError("E019", f"index {e.axes[0].value} is out of range for a tuple of {n} "
                                f"(0 to {n - 1})", e.axes[0].span)
            return value.items[e.axes[0].value]
        if isinstance(value, list):   # `layer_types[i]`: an entry of a list option
            return static.list_item(value, self._list_index(e), e.span)
        return self.annotate(self.as_tensor(value, e.value.span), e.axes, e.span)

    def _list_index(self, e: ast.Annotate) -> Any:
        """The one index of `xs[...]` on a list option: a number, a name (`i`) or a size expression `(i + 1)`."""
        if len(e.axes) != 1 or isinstance(e.axes[0], ast.AxisGroup):
            raise SpecError("E019", "a list option is indexed by one value, as in layer_types[i]", e.span)
        item = e.axes[0]
        if isinstance(item, ast.AxisInt):
            return item.value
        index = self.eval(ast.Name(item.name, span=item.span) if isinstance(item, ast.AxisName) else item.expr)
        return self._concrete(index)

    def _eval_Tuple(self, e: ast.Tuple) -> Any:
        return TupleValue(tuple(self.eval(x) for x in e.items))

    def _eval_Attr(self, e: ast.Attr) -> Any:
        path = _dotted(e)
        if path is None:
            raise SpecError("E026", "'.' reads a parameter, as in wte.weight", e.span)
        if path in self.params:
            return TensorValue(self.params[path])
        hint = difflib.get_close_matches(path, list(self.params), n=1)
        known = ", ".join(sorted(self.params)[:8]) or "none yet"
        raise SpecError("E011", f"no parameter '{path}' in this scope" +
                        (f"; did you mean '{hint[0]}'?" if hint else f" (parameters so far: {known})"), e.span)

    # ---- typed readers ----
    def tensor(self, expr: ast.Expr) -> TensorValue:
        return self.as_tensor(self.eval(expr), expr.span)

    def static(self, expr: ast.Expr, what: str) -> Any:
        v = self.eval(expr)
        if isinstance(v, (TensorValue, FuncRef, TupleValue)):
            raise SpecError("E026", f"{what} must be known when the spec is checked, got {kind_of(v)}", expr.span)
        return v

    def number(self, expr: ast.Expr, what: str) -> float:
        v = self._concrete(self.static(expr, what))
        try:
            out = static.python_value(v)
        except ValueError:
            raise SpecError("E026", f"{what} must be a number known when the spec is checked", expr.span) from None
        if isinstance(out, (str, bool, list)):   # a list option where one number is meant
            raise SpecError("E026", f"{what} must be a number, got {out!r}", expr.span)
        return float(out)

    def flag(self, expr: ast.Expr, what: str) -> bool:
        v = self.static(expr, what)
        if not isinstance(v, bool):
            raise SpecError("E026", f"{what} must be true or false, got {v!r}", expr.span)
        return v

    def size(self, expr: ast.Expr, what: str) -> Axis:
        """A size argument: its axis is named after the dim (`n_embd`) or the expression (`3*n_embd`)."""
        try:
            v = self.static(expr, what)
        except SpecError as e:   # an unknown name where a size is expected: a dim to declare, first of all
            name = next((n for n in _names(expr) if n.span == e.span), None) if e.code == "E011" else None
            if name is None:
                raise
            raise undefined(name.id, name.span, [*self.el.sizes.declared, *self.el.options], size=True) from None
        if isinstance(v, float):   # a float option times a size: the rounding is the spec's to choose
            raise SpecError("E026", f"{what} must be a size (an integer or dims), got the number {v!r}; "
                            "int(...) truncates it to one", expr.span)
        if isinstance(v, int) and not isinstance(v, bool):   # an integer option (`depth0` read from `depths.0`)
            v = sympy.Integer(v)
        if isinstance(v, (bool, str)) or not isinstance(v, sympy.Basic):
            raise SpecError("E026", f"{what} must be a size (an integer or dims), got {v!r}", expr.span)
        c = self.sizes.concrete(v)
        # is_number: no free dims, though maybe no sympy Number either (8*sqrt(2), E)
        if c.is_number and (not c.is_Integer or not 1 <= c <= MAX_SIZE):
            raise SpecError("E023" if c.is_Integer else "E014", f"{what} must be a positive integer, got {c}",
                            expr.span)
        if isinstance(expr, ast.Name):
            return Axis(expr.id, v)
        return Axis(str(v), v)

    def axis_name(self, expr: ast.Expr) -> str:
        if isinstance(expr, ast.Name):
            return expr.id
        if isinstance(expr, ast.Num) and isinstance(expr.value, int):
            return str(expr.value)
        if isinstance(expr, ast.Str):
            return expr.value
        raise SpecError("E017", "expected an axis name", expr.span)

    def axis_names(self, expr: ast.Expr) -> list[str]:
        """`T` or `(H, W)`."""
        if isinstance(expr, ast.Tuple):
            return [self.axis_name(x) for x in expr.items]
        return [self.axis_name(expr)]

    def ints(self, expr: ast.Expr, n: int, what: str) -> tuple[int, ...]:
        """An integer, or a tuple of `n` integers, known when the spec is checked."""
        items = expr.items if isinstance(expr, ast.Tuple) else [expr] * n
        if len(items) != n:
            raise SpecError("E019", f"{what} needs {n} values, got {len(items)}", expr.span)
        out = []
        for item in items:
            v = self._concrete(self.static(item, what))
            if isinstance(v, int) and not isinstance(v, bool):  # an integer option
                v = sympy.Integer(v)
            if not isinstance(v, sympy.Basic) or not v.is_Integer:
                raise SpecError("E026", f"{what} must be an integer, got {v}", item.span)
            out.append(int(v))
        return tuple(out)


def _dotted(e: ast.Expr) -> str | None:
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Attr):
        base = _dotted(e.value)
        return None if base is None else f"{base}.{e.name}"
    return None


def _names(expr: ast.Expr) -> list[ast.Name]:
    """The names in a size expression (arithmetic and calls of static functions)."""
    if isinstance(expr, ast.Name):
        return [expr]
    if isinstance(expr, ast.BinOp):
        return _names(expr.left) + _names(expr.right)
    if isinstance(expr, ast.Unary):
        return _names(expr.operand)
    if isinstance(expr, ast.Call):
        return [n for a in expr.args for n in _names(a)]
    return []
