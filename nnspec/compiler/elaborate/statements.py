"""Running a block's statements: assignments bind variables (naming the nodes after them, as a reader of the IR
would), `x op= y` updates one, `return` ends a block; `out[A, B] = x * y` contracts a product onto the named axes."""

from __future__ import annotations

from typing import Any

from nnspec.compiler.elaborate.expressions import ExpressionBuilder
from nnspec.compiler.elaborate.static_eval import CONSTANTS
from nnspec.compiler.elaborate.surface import BUILTINS
from nnspec.compiler.elaborate.values import TensorValue, TupleValue, kind_of
from nnspec.compiler.ops import OPS
from nnspec.compiler.ops.registry import Effect
from nnspec.errors import SpecError
from nnspec.spec import ast
from nnspec.spec.source import Span


class StatementBuilder(ExpressionBuilder):
    """A graph builder that runs statements."""

    def run(self, stmts: list[ast.Stmt]) -> list[TensorValue] | None:
        for i, stmt in enumerate(stmts):
            if isinstance(stmt, ast.Return):
                if i != len(stmts) - 1:
                    raise SpecError("E010", "statements after return are never run", stmts[i + 1].span)
                values = [self.eval(v) for v in stmt.values]
                out: list[TensorValue] = []
                for v, e in zip(values, stmt.values, strict=True):
                    items = v.items if isinstance(v, TupleValue) else (v,)
                    for item in items:
                        if not isinstance(item, TensorValue):
                            raise SpecError("E026", f"a block returns tensors, not {kind_of(item)}", e.span)
                        out.append(item)
                return out
            if isinstance(stmt, ast.Assign):
                self.assign(stmt)
            else:
                assert isinstance(stmt, ast.AugAssign)
                target = stmt.target
                if not isinstance(target, ast.Name):
                    raise SpecError("E010", f"'{stmt.op}=' needs a plain name on the left", target.span)
                current = self.eval(target)
                value = self.binary(stmt.op, current, self.eval(stmt.value), stmt.span)
                self.bind(target.id, value, target.span)
        return None

    def assign(self, stmt: ast.Assign) -> None:
        targets = stmt.targets
        for t in targets:
            name = t.value if isinstance(t, ast.Annotate) else t
            if not isinstance(name, ast.Name) or (isinstance(t, ast.Annotate) and not isinstance(t.value, ast.Name)):
                raise SpecError("E010", "can only assign to a name, optionally with axes: x = ... or x[A, B] = ...",
                                t.span)
        if len(targets) == 1:
            target = targets[0]
            if isinstance(target, ast.Annotate):
                value = self.contract_to(target.axes, stmt.value, target)
            else:
                value = self.eval(stmt.value)
            self.bind(_target_name(target), value, target.span)
            return
        value = self.eval(stmt.value)
        items = value.items if isinstance(value, TupleValue) else (value,)
        if len(items) != len(targets):
            raise SpecError("E019", f"{len(targets)} names on the left but the right gives {len(items)} "
                            f"value{'s' if len(items) != 1 else ''}", targets[0].span)
        for target, item in zip(targets, items, strict=True):
            if isinstance(target, ast.Annotate):
                item = self.annotate(self.as_tensor(item, target.span), target.axes, target.span)
            self.bind(_target_name(target), item, target.span)

    def bind(self, name: str, value: Any, span: Span) -> None:
        if name.startswith("__"):  # like every name that may reach generated code: no dunders
            raise SpecError("E004", f"'{name}' is a reserved name (it starts with __); choose another", span)
        if name in self.el.sizes.declared or name in self.el.options:
            kind = "dim" if name in self.el.sizes.declared else "option"
            raise SpecError("E024", f"'{name}' is a {kind}; choose another name for this value", span)
        if name in BUILTINS or name in self.blocks or name in CONSTANTS:
            raise SpecError("E024", f"'{name}' is a built-in function or block; choose another name", span)
        if isinstance(value, TensorValue):
            value = self._name_node(value, name)
        self._hold(self.vars.get(name), -1)
        self._hold(value, +1)
        self.vars[name] = value
        self.var_spans[name] = span

    def _hold(self, value: Any, n: int) -> None:
        """Count the tensors variables hold (directly or in a tuple), so `_name_node` need not scan them all."""
        for v in value.items if isinstance(value, TupleValue) else (value,):
            if isinstance(v, TensorValue):
                self._held[v] = self._held.get(v, 0) + n

    def _name_node(self, value: TensorValue, name: str) -> TensorValue:
        """Name a node after the variable it is first assigned to, as a person reading the IR would."""
        node = self.graph[value.node]
        auto = node.name == node.op or node.name.startswith(node.op + "_")
        # `y = h` or `q, k, v = t`: h and t must keep finding their nodes
        aliased = self._held.get(value, 0) > 0
        if auto and not aliased and OPS[node.op].effect is not Effect.LEAF and name not in self.graph.nodes \
                and not self.graph.users(node.name) and node.name not in self.graph.outputs:
            self.graph.rename(node.name, name)
            return TensorValue(name)
        node.meta.setdefault("var", name)   # kept named by op or scope: generated code still calls it `name`
        return value

    def contract_to(self, items: list[ast.AxisItem], expr: ast.Expr, target: ast.Annotate) -> TensorValue:
        """`out[A, B] = x * y / c`: sum the product over every axis the target leaves out."""
        factors = self._factors(expr)
        tensors = [v for v, _ in factors if isinstance(v, TensorValue)]
        atoms = [a.name if isinstance(a, ast.AxisName) else str(a.value)
                 for item in items for a in (item.items if isinstance(item, ast.AxisGroup) else [item])]
        available = {n for v in tensors for n in self.type_of(v).names}
        if tensors and not available <= set(atoms):
            for a in atoms:
                if a not in available:
                    raise SpecError("E017", f"result axis '{a}' is not an axis of the product "
                                    f"(its axes are {', '.join(sorted(available))})", target.span)
            result = self.emit("einsum", [v.node for v in tensors], {"out": tuple(atoms)}, expr.span)
            for v, op in factors:
                if not isinstance(v, TensorValue):
                    result = self.binary(op, result, v, expr.span)
        else:
            value = factors[0][0]
            for v, op in factors[1:]:
                value = self.binary(op, value, v, expr.span)
            result = self.as_tensor(value, expr.span)
        return self.annotate(result, items, target.span)

    def _factors(self, expr: ast.Expr) -> list[tuple[Any, str]]:
        """A product as (factor, '*' or '/') in source order; only static divisors stay separate."""
        if isinstance(expr, ast.Ternary):
            cond = self.eval(expr.cond)
            if isinstance(cond, bool):
                return self._factors(expr.then if cond else expr.orelse)
        if isinstance(expr, ast.BinOp) and expr.op == "*":
            return self._factors(expr.left) + self._factors(expr.right)
        if isinstance(expr, ast.BinOp) and expr.op == "/":
            left = self._factors(expr.left)
            right = self.eval(expr.right)
            if not isinstance(right, TensorValue):
                return left + [(right, "/")]
            value = left[0][0]
            for v, op in left[1:]:
                value = self.binary(op, value, v, expr.span)
            return [(self.binary("/", value, right, expr.span), "*")]
        return [(self.eval(expr), "*")]


def _target_name(t: ast.Expr) -> str:
    name = t.value if isinstance(t, ast.Annotate) else t
    assert isinstance(name, ast.Name)
    return name.id
