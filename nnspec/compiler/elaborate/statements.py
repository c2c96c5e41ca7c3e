"""Running a block's statements: assignments bind variables (naming the nodes after them, as a reader of the IR
would), `x op= y` updates one, `return` ends a block; `out[A, B] = x * y + b` contracts each product term onto the
named axes, then adds the terms."""

from __future__ import annotations

from typing import Any

from nnspec.compiler.elaborate.expressions import ExpressionBuilder
from nnspec.compiler.elaborate.static_eval import CONSTANTS
from nnspec.compiler.elaborate.surface import BUILTINS
from nnspec.compiler.elaborate.tensor_types import show
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
        """`out[A, B] = x * y / c + b`: Einstein's convention with names. Each term of a sum is a product that
        sums the axes the target leaves out, then the terms add (`s[T, S] = q * k + b` is `q @ k.T + b`, never the
        sum over `d` of `q * k + b`). Since the target names the result's axes, broadcasting onto them may be outer
        (`kv[B, dk, dv] = k * v`)."""
        atoms = [self.atom_name(a) for item in items
                 for a in (item.items if isinstance(item, ast.AxisGroup) else [item])]
        terms = self._terms(expr, "+", expr.span)
        enclosing, self.named_axes = self.named_axes, frozenset(atoms)
        try:
            result: Any = None
            available: set[str] = set()
            contracted = False
            for op, term, span in terms:
                value, axes = self._contract_term(term, atoms, target, alone=len(terms) == 1)
                available |= axes
                contracted |= not axes <= set(atoms)
                result = value if result is None else self.binary(op, result, value, span)
        finally:
            self.named_axes = enclosing
        if contracted:
            self._need_atoms(atoms, available, target)
        return self.annotate(self.as_tensor(result, expr.span), items, target.span)

    def _contract_term(self, term: ast.Expr, atoms: list[str], target: ast.Annotate,
                       alone: bool) -> tuple[Any, set[str]]:
        """One term: its product, summed over the axes the target leaves out; and the axes of its factors."""
        factors = self._factors(term)
        tensors = [(v, span) for v, _, span in factors if isinstance(v, TensorValue)]
        available = {n for v, _ in tensors for n in self.type_of(v).names}
        if not tensors or available <= set(atoms):
            value = factors[0][0]
            for v, op, _ in factors[1:]:
                value = self.binary(op, value, v, term.span)
            return value, available
        if alone:
            self._need_atoms(atoms, available, target)
        for axis in sorted(available - set(atoms)):
            self._refuse_lone_sum(axis, tensors, target, alone)
        out = tuple(a for a in atoms if a in available)
        result = self.emit("einsum", [v.node for v, _ in tensors], {"out": out}, term.span)
        for v, op, _ in factors:
            if not isinstance(v, TensorValue):
                result = self.binary(op, result, v, term.span)
        return result, available

    def _need_atoms(self, atoms: list[str], available: set[str], target: ast.Annotate) -> None:
        for a in atoms:
            if a not in available:
                raise SpecError("E017", f"result axis '{a}' is not an axis of the product "
                                f"(its axes are {', '.join(sorted(available))})", target.span)

    def _refuse_lone_sum(self, axis: str, tensors: list[tuple[TensorValue, Span]], target: ast.Annotate,
                         alone: bool) -> None:
        """A contraction sums axes its factors share; one that only one factor has is a mislabelled factor far
        more often than a sum (`o[B, T, d] = p * v[B, T, d]`, v labelled T for S, sums S over p alone: attention
        becomes the identity). A size-1 axis sums to itself, so dropping it is no mistake."""
        having = [(v, span) for v, span in tensors if axis in self.type_of(v).names]
        if len(having) > 1 or self.sizes.equal(self.type_of(having[0][0]).axis(axis).size, 1) is True:
            return
        v, span = having[0]
        where = ("one factor of the product" if len(tensors) > 1 else "a single tensor, not a product" if alone
                 else "one term of the sum alone")
        err = SpecError("E017", f"axis '{axis}' would be summed over {where} ({show(self.type_of(v))}): a "
                        "contraction sums only axes its factors share (each term of a sum on its own, before the "
                        "terms add), so a factor is probably labelled wrong; if a plain sum is meant, write "
                        f"sum(..., over={axis})", target.span)
        raise err.with_note(f"the only factor with axis '{axis}'", span)

    def _terms(self, expr: ast.Expr, op: str, span: Span) -> list[tuple[str, ast.Expr, Span]]:
        """A sum as (operator, term, span of the `+`/`-` joining it), left to right; a subtracted sum's terms flip."""
        if isinstance(expr, ast.Ternary):
            cond = self.eval(expr.cond)
            if isinstance(cond, bool):
                return self._terms(expr.then if cond else expr.orelse, op, span)
        if isinstance(expr, ast.BinOp) and expr.op in ("+", "-"):
            flip = {"+": "-", "-": "+"}
            right = self._terms(expr.right, expr.op, expr.span)
            if op == "-":
                right = [(flip[o], t, s) for o, t, s in right]
            return self._terms(expr.left, op, span) + right
        return [(op, expr, span)]

    def _factors(self, expr: ast.Expr) -> list[tuple[Any, str, Span]]:
        """A product as (factor, '*' or '/', its span) in source order; only static divisors stay separate."""
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
                return left + [(right, "/", expr.right.span)]
            value = left[0][0]
            for v, op, _ in left[1:]:
                value = self.binary(op, value, v, expr.span)
            return [(self.binary("/", value, right, expr.span), "*", expr.span)]
        return [(self.eval(expr), "*", expr.span)]


def _target_name(t: ast.Expr) -> str:
    name = t.value if isinstance(t, ast.Annotate) else t
    assert isinstance(name, ast.Name)
    return name.id
