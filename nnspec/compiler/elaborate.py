"""Spec -> typed graph. Walks the statements, builds nodes and infers every node's type as it is made,
so each error is reported at the user's expression.

Blocks become templates (one `Graph` per distinct binding of argument types and static values); calls
and repeats refer to them, so nothing is unrolled.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

import sympy

from nnspec.compiler import static
from nnspec.compiler.ir import DTYPE_ALIASES, Axis, DType, Graph, Guard, Model, TensorType, Type
from nnspec.compiler.ops import BUILTINS, OPS
from nnspec.compiler.sizes import MAX_SIZE, Sizes, symbol
from nnspec.errors import SpecError
from nnspec.spec import ast
from nnspec.spec.load import BlockDecl, Spec, check_identifier
from nnspec.spec.source import Span

MAX_NODES = 200_000
MAX_REPEAT = 100_000
# parameter and buffer tensors once calls and repeats are unrolled (a 10^5-layer repeat of a 10^5-layer repeat is
# 15 lines of spec): building the model, and mapping weights, visit each one
MAX_PARAM_TENSORS = 200_000
MAX_DIM_DEPTH = 100   # a dim defined by a dim defined by a dim ...
MAX_BLOCK_DEPTH = 64  # blocks calling blocks (real models nest a handful deep); each level is Python recursion
CONSTANTS: dict[str, Any] = {"true": True, "false": False, "inf": math.inf, "pi": math.pi}


class UsageError(Exception):
    """A bad command-line or API argument (not a mistake in the spec text)."""


# ---- values ----
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


class Elaborator:
    """Model-wide state: sizes, options, templates and guards."""

    def __init__(self, spec: Spec, overrides: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self.sizes = Sizes()
        self.options: dict[str, Any] = {}
        self.templates: dict[str, Graph] = {}
        self._template_keys: dict[tuple[Any, ...], Graph] = {}
        self._template_numbers: dict[str, int] = {}
        self._building: list[str] = []
        self.guards: list[Guard] = []
        self.node_count = 0
        self.param_tensors: dict[int, int] = {}  # id(graph) -> its parameter tensors, unrolled
        overrides = dict(overrides or {})
        self._init_options(overrides)
        self._init_dims(overrides)
        for name, value in overrides.items():  # what is left binds free dims
            self._bind_free(name, value)

    # ---- dims and options ----
    def _init_options(self, overrides: dict[str, Any]) -> None:
        for name, decl in self.spec.options.items():
            if decl.choices is not None and decl.default not in decl.choices:
                raise SpecError("E015", f"option '{name}' defaults to {decl.default!r}, which is not one of its "
                                f"choices {decl.choices}", decl.span)
            value = decl.default
            if name in overrides:
                value = overrides.pop(name)
                if isinstance(decl.default, bool) != isinstance(value, bool) or (
                        isinstance(decl.default, str) != isinstance(value, str)):
                    raise UsageError(f"option {name} takes a value like {decl.default!r}, got {value!r}")
                if isinstance(decl.default, float) and isinstance(value, int):
                    value = float(value)
                if decl.choices is not None and value not in decl.choices:
                    raise UsageError(f"option {name} must be one of {decl.choices}, got {value!r}")
            self.options[name] = value

    def _init_dims(self, overrides: dict[str, Any]) -> None:
        dims = self.spec.dims
        for name in dims:
            self.sizes.declared[name] = symbol(name)
        state: dict[str, str] = {}

        stack: list[str] = []

        def visit(name: str, via: Span | None) -> None:
            if state.get(name) == "done":
                return
            decl = dims[name]
            if state.get(name) == "active":
                cycle = [*stack[stack.index(name):], name]
                first = dims[cycle[0]]
                raise SpecError("E020", f"dims form a cycle: {' -> '.join(cycle)}", first.span)
            if len(stack) >= MAX_DIM_DEPTH:  # each level is Python recursion
                raise SpecError("E005", f"dims depend on dims more than {MAX_DIM_DEPTH} deep "
                                f"({' -> '.join(stack[:3])} -> ... -> {name})", decl.span)
            state[name] = "active"
            stack.append(name)
            if name in overrides:
                value = overrides.pop(name)
                if isinstance(value, bool) or not isinstance(value, int):
                    raise UsageError(f"dim {name} takes an integer, got {value!r}")
                self._set_dim(name, value, decl.span, f"{name} = {value}")
            elif isinstance(decl.value, int):
                self._set_dim(name, decl.value, decl.span, f"{name} = {decl.value}")
            else:
                for ref in ast.names_in(decl.value):
                    if ref.id in dims:
                        visit(ref.id, ref.span)
                value = self._concrete(self.static_eval(decl.value, allow_free=False))
                if not isinstance(value, sympy.Basic) or not value.is_Number:
                    raise SpecError("E026", f"dim '{name}' must be a number, got {value!r}", decl.span)
                if not value.is_Integer:
                    raise SpecError("E014", self._not_integer(name, decl.value, value), decl.span)
                self._set_dim(name, int(value), decl.span, f"{name} = {value}")
            state[name] = "done"
            stack.pop()

        # A cycle is reported at the first dim (in declaration order) that belongs to it.
        for name in dims:
            visit(name, None)

    def _not_integer(self, name: str, expr: ast.Expr, value: sympy.Basic) -> str:
        if isinstance(expr, ast.BinOp) and expr.op == "/":
            a = self._concrete(self.static_eval(expr.left, allow_free=False))
            b = self._concrete(self.static_eval(expr.right, allow_free=False))
            return (f"dim '{name}' is not an integer: {a} is not divisible by {b} ({a}/{b} = {float(value):g}); "
                    "use // to round down")
        return f"dim '{name}' is not an integer: it evaluates to {value}"

    def _set_dim(self, name: str, value: int, span: Span, text: str) -> None:
        if not 1 <= value <= MAX_SIZE:
            raise SpecError("E023", f"dim '{name}' = {value} is out of range (1 to 2^{MAX_SIZE.bit_length() - 1})",
                            span)
        self.sizes.values[self.sizes.declared[name]] = sympy.Integer(value)

    def _bind_free(self, name: str, value: Any) -> None:
        known = [*self.spec.dims, *self.spec.options]
        if not name.isidentifier() or name in CONSTANTS:
            raise UsageError(f"cannot set {name!r}: not a name")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE:
            hint = difflib.get_close_matches(name, known, n=1)
            raise UsageError(f"cannot set {name}={value!r}: not a dim or option of this spec"
                             + (f" (did you mean {hint[0]}?)" if hint else "") + ", and free dims take integers")
        self.sizes.values[self.sizes.free_symbol(name)] = sympy.Integer(value)

    # ---- static evaluation (dims, require, sizes in statements) ----
    def lookup_static(self, name: str, span: Span, allow_free: bool) -> Any:
        if name in self.sizes.declared:
            return self.sizes.declared[name]
        if name in self.options:
            return self.options[name]
        if name in CONSTANTS:
            return CONSTANTS[name]
        if allow_free:
            return self.sizes.free_symbol(name)
        raise self.undefined(name, span, [*self.sizes.declared, *self.options])

    def undefined(self, name: str, span: Span, candidates: list[str]) -> SpecError:
        hint = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
        return SpecError("E011", f"undefined name '{name}'" + (f"; did you mean '{hint[0]}'?" if hint else ""), span)

    def static_eval(self, expr: ast.Expr, allow_free: bool) -> Any:
        if isinstance(expr, ast.Num):
            return _number(expr)
        if isinstance(expr, ast.Str):
            return expr.value
        if isinstance(expr, ast.Name):
            return self.lookup_static(expr.id, expr.span, allow_free)
        if isinstance(expr, ast.BinOp):
            a = self.static_eval(expr.left, allow_free)
            b = self.static_eval(expr.right, allow_free)
            return static.binop(expr.op, a, b, expr.span, self.sizes.concrete)
        if isinstance(expr, ast.Unary):
            v = self.static_eval(expr.operand, allow_free)
            return v if expr.op == "+" else static.binop("*", -1, v, expr.span, self.sizes.concrete)
        if isinstance(expr, ast.Compare):
            a = self.static_eval(expr.left, allow_free)
            b = self.static_eval(expr.right, allow_free)
            return static.compare(expr.op, self._concrete(a), self._concrete(b), expr.span)
        if isinstance(expr, ast.BoolOp):
            a = _condition(self.static_eval(expr.left, allow_free), expr.op, expr.left.span)
            b = _condition(self.static_eval(expr.right, allow_free), expr.op, expr.right.span)
            return sympy.And(a, b) if expr.op == "and" else sympy.Or(a, b)
        if isinstance(expr, ast.Not):
            return sympy.Not(_condition(self.static_eval(expr.operand, allow_free), "not", expr.operand.span))
        if isinstance(expr, ast.Ternary):
            cond = self.static_eval(expr.cond, allow_free)
            if not isinstance(cond, bool):
                raise SpecError("E026", "condition must be known when the spec is checked", expr.cond.span)
            return self.static_eval(expr.then if cond else expr.orelse, allow_free)
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in STATIC_FUNCS \
                and not expr.kwargs:
            args = [self.static_eval(a, allow_free) for a in expr.args]
            return static_call(expr.func.id, args, expr.span, self.sizes.concrete)
        raise SpecError("E026", "only arithmetic on dims and options is allowed here", expr.span)

    def _concrete(self, v: Any) -> Any:
        return self.sizes.concrete(v) if isinstance(v, sympy.Basic) else v

    # ---- the model ----
    def elaborate(self) -> Model:
        spec = self.spec
        for req in spec.require:
            self._require(req.expr, req.span)
        body = Builder(self, Graph(spec.name), scope_prefix="")
        inputs: dict[str, str] = {}
        for name, decl in spec.inputs.items():
            t = self.tensor_type(decl.type)
            attrs: dict[str, Any] = {"name": name, "type": t}
            if decl.default is not None:
                if isinstance(decl.default, str):
                    raise SpecError("E004", f"input '{name}' default must be a number or true/false", decl.span)
                attrs["default"] = decl.default
            node = body.emit("input", [], attrs, decl.span, hint=name)
            body.bind(name, node, decl.key_span)
            inputs[name] = node.node
        body.run(spec.body)
        outputs: dict[str, str] = {}
        for name, decl in spec.outputs.items():
            want = self.tensor_type(decl.type)
            value = body.vars.get(name)
            if value is None:
                raise SpecError("E021", f"output '{name}' is never assigned in the body", decl.key_span)
            if not isinstance(value, TensorValue):
                raise SpecError("E021", f"output '{name}' must be a tensor, got {kind_of(value)}", decl.key_span)
            got = body.graph[value.node].type
            if not self.same_type(got, want):
                raise SpecError("E021", f"output '{name}' is declared {self.show(want)} but the body computes "
                                f"{self.show(got)}", decl.key_span).with_note("assigned here", body.var_spans[name])
            outputs[name] = value.node
        body.graph.outputs = list(outputs.values())
        return Model(spec.name, body.graph, self.templates, self.sizes, self.options, inputs, outputs,
                     self.guards, spec.source.name)

    def _require(self, expr: ast.Expr, span: Span) -> None:
        value = self.static_eval(expr, allow_free=True)
        if value is True or value is sympy.true:
            return
        if value is False or value is sympy.false:
            raise SpecError("E015", f"requirement '{_text(span)}' does not hold{self._explain(expr)}", span)
        # a condition on free dims, kept for run time; a size (`K + N`, even a bare `K`: a sympy Symbol is also a
        # Boolean) is no condition
        condition = (sympy.core.relational.Relational, sympy.logic.boolalg.BooleanFunction)
        if isinstance(value, condition) and value.free_symbols:
            self.add_guard(Guard(_guard_form(value, span), _text(span), span))
            return
        raise SpecError("E026", f"requirement '{_text(span)}' is not a condition (it evaluates to {value})", span)

    def add_guard(self, guard: Guard) -> None:
        """Keep one guard per fact: `K == N` and `N == K` are the same check, and so are `H % window == 0` and
        `H % wh == 0` where the dim wh is window (facts are compared with the declared dims' values)."""
        fact = self.sizes.concrete(guard.expr)
        if fact is sympy.true:  # `T % T == 0` holds for every size: no check to run (nor to generate)
            return
        if fact is sympy.false:
            raise SpecError("E012", f"sizes can never agree: {guard.text}", guard.span)
        key = _canonical(fact)
        if all(_canonical(self.sizes.concrete(g.expr)) != key for g in self.guards):
            self.guards.append(guard)

    def _explain(self, expr: ast.Expr) -> str:
        if isinstance(expr, ast.Compare):
            a = self._concrete(self.static_eval(expr.left, allow_free=True))
            b = self._concrete(self.static_eval(expr.right, allow_free=True))
            return f": {a} {expr.op} {b} is false"
        return ""

    def tensor_type(self, t: ast.TypeExpr) -> TensorType:
        dtype = DTYPE_ALIASES.get(t.dtype)
        if dtype is None:
            hint = difflib.get_close_matches(t.dtype, list(DTYPE_ALIASES), n=1)
            raise SpecError("E004", f"unknown dtype '{t.dtype}'" + (f"; did you mean '{hint[0]}'?" if hint else
                            f"; dtypes are {', '.join(DTYPE_ALIASES)}"), t.dtype_span)
        axes: list[Axis] = []
        for item in t.axes:
            if isinstance(item, ast.AxisGroup):
                raise SpecError("E018", "a declared type lists single axes; groups are for annotations", item.span)
            if isinstance(item, ast.AxisInt):
                if not 1 <= item.value <= MAX_SIZE:
                    raise SpecError("E023", f"axis size {item.value} is out of range (1 to "
                                    f"2^{MAX_SIZE.bit_length() - 1})", item.span)
                axes.append(Axis(str(item.value), sympy.Integer(item.value)))
            else:
                if item.name.startswith("__"):  # a free dim becomes a name in generated code, like every name
                    raise SpecError("E004", f"axis name '{item.name}' is reserved (it starts with __)", item.span)
                if item.name in self.options:
                    raise SpecError("E026", f"'{item.name}' is an option, not a size", item.span)
                sym = self.sizes.lookup(item.name) or self.sizes.free_symbol(item.name)
                axes.append(Axis(item.name, sym))
            if [a.name for a in axes].count(axes[-1].name) > 1:
                raise SpecError("E017", f"axis '{axes[-1].name}' appears twice in this type", item.span)
        return TensorType(tuple(axes), dtype)

    def same_type(self, a: Type, b: Type) -> bool:
        """Declared output types bind by position and size, like a block signature: names may differ."""
        if isinstance(a, tuple) or isinstance(b, tuple):
            return a == b
        return a.dtype == b.dtype and a.rank == b.rank and all(
            self.sizes.equal(x, y) is not False for x, y in zip(a.sizes, b.sizes, strict=True))

    def show(self, t: Type) -> str:
        if isinstance(t, tuple):
            return "(" + ", ".join(self.show(x) for x in t) + ")"
        return f"{t.dtype}[{', '.join(a.name if str(a.size) == a.name else f'{a.name}={a.size}' for a in t.axes)}]"

    # ---- block templates ----
    def template(self, decl: BlockDecl, args: list[tuple[str, Any]], span: Span) -> Graph:
        key = (decl.signature.name, tuple((n, v if not isinstance(v, sympy.Basic) else str(v)) for n, v in args))
        if key in self._template_keys:
            return self._template_keys[key]
        name = decl.signature.name
        if len(self._building) >= MAX_BLOCK_DEPTH:
            raise SpecError("E005", f"blocks call blocks more than {MAX_BLOCK_DEPTH} deep "
                            f"({' -> '.join(self._building[:3])} -> ... -> {name})", span)
        if name in self._building:
            raise SpecError("E020", f"block '{name}' calls itself (through {' -> '.join(self._building)}); "
                            "use repeat(...) for depth", span)
        graph = Graph(self._template_name(name))
        graph.meta["block"] = name
        self._building.append(name)
        try:
            b = Builder(self, graph, scope_prefix="")
            for pname, value in args:  # parameters are local: they may shadow dims and options
                if isinstance(value, TensorType):
                    value = b.emit("input", [], {"name": pname, "type": value}, decl.signature.span, hint=pname)
                b.vars[pname] = value
                b.var_spans[pname] = decl.signature.span
            result = b.run(decl.body)
            if result is None:
                raise SpecError("E021", f"block '{name}' does not return a value", decl.signature.span)
            graph.outputs = [v.node for v in result]
        finally:
            self._building.pop()
        self.templates[graph.name] = graph
        self._template_keys[key] = graph
        return graph

    def _template_name(self, block: str) -> str:
        """`mlp`, then `mlp_2`, `mlp_3`, ... for more bindings; never a name another template or block has."""
        n = self._template_numbers.get(block, 0)
        while True:
            n += 1
            name = block if n == 1 else f"{block}_{n}"
            if name not in self.templates and (name == block or name not in self.spec.blocks):
                self._template_numbers[block] = n
                return name


STATIC_FUNCS = {"sqrt", "min", "max", "abs", "log", "exp"}


def static_call(name: str, args: list[Any], span: Span, concrete: Any = None) -> Any:
    nums = [static.to_sym(a, span) for a in args]
    if name in ("min", "max"):
        if len(nums) < 2:
            raise SpecError("E019", f"{name} takes at least two values", span)
        return (sympy.Min if name == "min" else sympy.Max)(*nums)
    if len(nums) != 1:
        raise SpecError("E019", f"{name} takes one value, got {len(nums)}", span)
    fn = {"sqrt": sympy.sqrt, "abs": sympy.Abs, "log": sympy.log, "exp": sympy.exp}[name]
    return static.checked(fn(nums[0]), span, concrete)  # sqrt(-1), log(0), exp(1000): refused where written


def _text(span: Span) -> str:
    line = span.source.line_text(span.line) or ""
    end = span.end_col - 1 if span.end_line == span.line else len(line)
    return line[span.col - 1:end].strip()


class Builder:
    """Builds one graph (a template or the body) from statements: variables, scopes, parameters."""

    def __init__(self, el: Elaborator, graph: Graph, scope_prefix: str) -> None:
        self.el = el
        self.sizes = el.sizes
        self.graph = graph
        self.vars: dict[str, Any] = {}
        self._held: dict[TensorValue, int] = {}  # tensors held by variables bound with bind(), with multiplicity
        self.var_spans: dict[str, Span] = {}
        self.axis_sizes: dict[str, tuple[sympy.Expr, Span | None]] = {}
        self.scopes: dict[str, Span | None] = {}
        self.params: dict[str, str] = {}  # local parameter path -> node name

    # ---- statements ----
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
        if name in BUILTINS or name in self.el.spec.blocks or name in CONSTANTS:
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
        if auto and not aliased and node.op not in ("input", "param") and name not in self.graph.nodes \
                and not self.graph.users(node.name) and node.name not in self.graph.outputs:
            self.graph.rename(node.name, name)
            return TensorValue(name)
        node.meta.setdefault("var", name)   # kept named by op or scope: generated code still calls it `name`
        return value

    # ---- expressions ----
    def eval(self, expr: ast.Expr) -> Any:
        method = getattr(self, "_eval_" + type(expr).__name__)
        return method(expr)

    def _eval_Num(self, e: ast.Num) -> Any:
        return _number(e)

    def _eval_Str(self, e: ast.Str) -> Any:
        return e.value

    def _eval_Name(self, e: ast.Name) -> Any:
        if e.id in self.vars:
            return self.vars[e.id]
        if e.id in self.el.sizes.declared or e.id in self.el.options or e.id in CONSTANTS:
            return self.el.lookup_static(e.id, e.span, allow_free=False)
        if e.id in BUILTINS or e.id in self.el.spec.blocks:
            return FuncRef(e.id)
        if e.id in self.el.sizes.free:
            return self.el.sizes.free[e.id]
        if e.id in self.axis_sizes:  # an axis named in this block stands for its size
            return self.axis_sizes[e.id][0]
        candidates = [*self.vars, *self.el.sizes.declared, *self.el.options, *BUILTINS, *self.el.spec.blocks]
        raise self.el.undefined(e.id, e.span, candidates)

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
            if e.func.id not in BUILTINS and e.func.id not in self.el.spec.blocks:
                hint = difflib.get_close_matches(e.func.id, [*BUILTINS, *self.el.spec.blocks], n=1, cutoff=0.6)
                raise SpecError("E016", f"unknown function '{e.func.id}'" +
                                (f"; did you mean '{hint[0]}'?" if hint else ""), e.func.span)
            func: Any = FuncRef(e.func.id)
        else:
            func = self.eval(e.func)
        if isinstance(func, str) and (func in BUILTINS or func in self.el.spec.blocks):
            func = FuncRef(func)  # a string option naming a function: activation(x)
        if not isinstance(func, FuncRef):
            raise SpecError("E016", f"cannot call {kind_of(func)}", e.func.span)
        if func.name in self.el.spec.blocks:
            return self.call_block(self.el.spec.blocks[func.name], e)
        return BUILTINS[func.name].fn(self, e)

    def _eval_Annotate(self, e: ast.Annotate) -> Any:
        return self.annotate(self.tensor(e.value), e.axes, e.span)

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

    # ---- typed access ----
    def tensor(self, expr: ast.Expr) -> TensorValue:
        return self.as_tensor(self.eval(expr), expr.span)

    def as_tensor(self, value: Any, span: Span) -> TensorValue:
        if not isinstance(value, TensorValue):
            raise SpecError("E026", f"expected a tensor, got {kind_of(value)}", span)
        return value

    def type_of(self, v: TensorValue) -> TensorType:
        t = self.graph[v.node].type
        assert isinstance(t, TensorType)
        return t

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
        if isinstance(out, (str, bool)):
            raise SpecError("E026", f"{what} must be a number, got {out!r}", expr.span)
        return float(out)

    def flag(self, expr: ast.Expr, what: str) -> bool:
        v = self.static(expr, what)
        if not isinstance(v, bool):
            raise SpecError("E026", f"{what} must be true or false, got {v!r}", expr.span)
        return v

    def size(self, expr: ast.Expr, what: str) -> Axis:
        """A size argument: its axis is named after the dim (`n_embd`) or the expression (`3*n_embd`)."""
        v = self.static(expr, what)
        if isinstance(v, (bool, str, float)) or not isinstance(v, sympy.Basic):
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

    def known_size(self, name: str) -> sympy.Expr | None:
        """The size a name denotes in an annotation: a dim, a size-valued block parameter, or an axis seen here."""
        value = self.vars.get(name)  # a block parameter shadows a dim of the same name
        if isinstance(value, sympy.Basic):
            return value
        sym = self.sizes.lookup(name)
        if sym is not None:
            return sym
        if name in self.axis_sizes:
            return self.axis_sizes[name][0]
        return None

    def _size_of(self, name: str, span: Span) -> sympy.Expr | None:
        """`known_size`, refusing a value that cannot be a size (a block parameter bound to 0, -2 or 1/2)."""
        size = self.known_size(name)
        if size is not None:
            c = self.sizes.concrete(size)
            if c.is_number and (not c.is_Integer or not 1 <= c <= MAX_SIZE):
                raise SpecError("E023", f"'{name}' is {c}, which is not a size (an integer from 1 to "
                                f"2^{MAX_SIZE.bit_length() - 1})", span)
        return size

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

    def axis(self, name: str, span: Span) -> Axis:
        """An axis named in this scope: one seen on a tensor here, or a dim."""
        if name in self.axis_sizes:
            return Axis(name, self.axis_sizes[name][0])
        sym = self.sizes.lookup(name)
        if sym is not None:
            return Axis(name, sym)
        hint = difflib.get_close_matches(name, list(self.axis_sizes), n=1)
        raise SpecError("E017", f"unknown axis '{name}'" + (f"; did you mean '{hint[0]}'?" if hint else ""), span)

    def _concrete(self, v: Any) -> Any:
        return self.sizes.concrete(v) if isinstance(v, sympy.Basic) else v

    # ---- building nodes ----
    def emit(self, op: str, inputs: list[str], attrs: dict[str, Any], span: Span | None,
             hint: str | None = None, record: bool = True) -> TensorValue:
        """Add a node with its inferred type. `record=False` leaves its axis names out of the block's
        one-size-per-name table: for an operand relabelled only to line up with another inside one op."""
        opdef = OPS[op]
        try:
            t = opdef.infer([self.graph[i].type for i in inputs], attrs, self.sizes)
        except SpecError as err:
            if err.span is None:
                err.span = span
            raise
        self._take_guards(span)
        if op in ("param", "buffer"):
            self._known_sizes(attrs["type"], span)
        if isinstance(t, TensorType) and record:
            self._record_axes(t, span)
        self.el.node_count += 1
        if self.el.node_count > MAX_NODES:
            raise SpecError("E005", f"the model has more than {MAX_NODES:,} graph nodes", span)
        self._count_param_tensors(op, attrs, span)
        return TensorValue(self.graph.add(op, inputs, attrs, t, span, hint).name)

    def _count_param_tensors(self, op: str, attrs: dict[str, Any], span: Span | None) -> None:
        """Parameter tensors of this graph with its calls and repeats unrolled, in closed form."""
        if op in ("param", "buffer"):
            n = 1
        elif op in ("call", "scan", "repeat"):
            n = self.el.param_tensors.get(id(self.el.templates[attrs["block"]]), 0)
            if op == "repeat" and not attrs["shared"]:
                n *= attrs["count"]
        else:
            return
        total = self.el.param_tensors.get(id(self.graph), 0) + n
        self.el.param_tensors[id(self.graph)] = total
        if total > MAX_PARAM_TENSORS:
            raise SpecError("E005", f"the model has more than {MAX_PARAM_TENSORS:,} parameter tensors once its "
                            f"repeats are unrolled ({total:,} here)", span)

    def _known_sizes(self, t: TensorType, span: Span | None) -> None:
        """Parameters are allocated when the model is built: their sizes cannot wait for the inputs."""
        for a in t.axes:
            if not self.sizes.concrete(a.size).is_Integer:
                free = ", ".join(sorted(str(s) for s in self.sizes.concrete(a.size).free_symbols))
                raise SpecError("E026", f"parameter axis {a.name} has size {a.size}, which depends on the free dim "
                                f"{free}; a parameter's size must be known when the spec is checked (declare "
                                f"{free} under dims:)", span)

    def _take_guards(self, span: Span | None) -> None:
        for fact, text in self.sizes.pending:
            self.el.add_guard(Guard(fact, text, span))
        self.sizes.pending.clear()

    def _record_axes(self, t: TensorType, span: Span | None) -> None:
        """Within one block an axis name means one size."""
        for a in t.axes:
            seen = self.axis_sizes.get(a.name)
            if seen is None:
                self.axis_sizes[a.name] = (a.size, span)
            elif self.sizes.equal(seen[0], a.size) is False:
                err = SpecError("E012", f"axis '{a.name}' has size {self.sizes.describe(a.size)} here but "
                                f"{self.sizes.describe(seen[0])} earlier in this block; rename one of them", span)
                raise err.with_note("first seen here", seen[1]) if seen[1] is not None else err

    def const(self, value: Any, like: TensorType | None, span: Span) -> TensorValue:
        """A scalar constant; like JAX's weak types, it takes the dtype of the tensor it meets."""
        value = self._concrete(value)
        try:
            py = static.python_value(value)
        except ValueError:
            raise SpecError("E026", f"{value} depends on a free dim; only constants known when the spec is "
                            "checked can meet a tensor", span) from None
        if isinstance(py, str):
            raise SpecError("E026", f"text {py!r} cannot be used in tensor arithmetic", span)
        if isinstance(py, int) and not isinstance(py, bool) and abs(py) > static.MAX_MAGNITUDE:
            raise SpecError("E023", f"value {py} is out of range (|x| > 2^62)", span)
        if isinstance(py, bool):
            dtype = DType.bool
        elif like is not None and (like.dtype.is_float or (isinstance(py, int) and like.dtype.is_int)):
            dtype = like.dtype
        else:
            dtype = DType.float32 if isinstance(py, float) else DType.int64
        if dtype.is_int and not fits_dtype(py, dtype):  # torch refuses it (a float constant overflows to inf)
            raise SpecError("E023", f"constant {py} does not fit the {dtype} tensor it meets", span)
        return self.emit("const", [], {"value": py, "type": TensorType((), dtype)}, span, hint="const")

    def elementwise(self, op: str, operands: list[Any], span: Span) -> TensorValue:
        tensors = [v for v in operands if isinstance(v, TensorValue)]
        like = self.type_of(tensors[0]) if tensors else None
        nodes = []
        for v in operands:
            if isinstance(v, TensorValue):
                nodes.append(v.node)
            elif isinstance(v, (FuncRef, TupleValue)):
                raise SpecError("E026", f"cannot use {kind_of(v)} in arithmetic", span)
            else:
                nodes.append(self.const(v, like, span).node)
        return self.emit(op, nodes, {}, span)

    def binary(self, op: str, a: Any, b: Any, span: Span) -> Any:
        if isinstance(a, TensorValue) or isinstance(b, TensorValue):
            if op == "@":
                return self.matmul(a, b, span)
            name = {"+": "add", "-": "sub", "*": "mul", "/": "div", "//": "floordiv", "%": "mod", "**": "pow"}[op]
            self._refuse_static_divisor(op, a, b, span)
            return self.elementwise(name, [a, b], span)
        for v in (a, b):
            if isinstance(v, (FuncRef, TupleValue)):
                raise SpecError("E026", f"cannot use {kind_of(v)} in arithmetic", span)
        if isinstance(a, float) or isinstance(b, float):
            x, y = self._concrete(a), self._concrete(b)
            try:
                fx, fy = float(x), float(y)
                result = _float_op(op, fx, fy)
            except (TypeError, ValueError):
                pass
            except ZeroDivisionError:
                raise SpecError("E026", f"division by zero: {a} {op} {b}", span) from None
            except OverflowError:
                raise SpecError("E023", f"{a} {op} {b} is out of range of a float", span) from None
            else:
                if not math.isfinite(result) and math.isfinite(fx) and math.isfinite(fy):
                    raise SpecError("E023", f"{a} {op} {b} is out of range of a float", span)
                return result
        return static.binop(op, a, b, span, self.sizes.concrete)

    def _refuse_static_divisor(self, op: str, a: Any, b: Any, span: Span) -> None:
        """A tensor divided by a constant zero, or an integer tensor to a negative constant power."""
        if isinstance(b, (TensorValue, FuncRef, TupleValue, str)):
            return
        value = self._concrete(b)
        if op in ("/", "//", "%") and not isinstance(value, bool) and value == 0:
            raise SpecError("E026", f"division by zero: a tensor {op} {b}", span)
        if op == "**" and isinstance(a, TensorValue) and not self.type_of(a).dtype.is_float \
                and isinstance(value, (int, float, sympy.Number)) and value < 0:
            raise SpecError("E026", f"{self.type_of(a).dtype} tensor ** {b}: integers to negative powers are not "
                            "integers; cast to a float dtype first", span)

    def matmul(self, a: Any, b: Any, span: Span) -> TensorValue:
        x, y = self.as_tensor(a, span), self.as_tensor(b, span)
        tx, ty = self.type_of(x), self.type_of(y)
        if not tx.axes or tx.axes[-1].name not in ty.names:
            raise SpecError("E017", f"'@' contracts the last axis of the left operand, "
                            f"{tx.axes[-1].name if tx.axes else '(none)'}, which {ty} does not have", span)
        last = tx.axes[-1].name
        out = tuple(n for n in (*tx.names, *ty.names) if n != last)
        return self.emit("einsum", [x.node, y.node], {"out": tuple(dict.fromkeys(out))}, span)

    # ---- named-axis views ----
    def annotate(self, value: TensorValue, items: list[ast.AxisItem], span: Span) -> TensorValue:
        t = self.type_of(value)
        names = list(t.names)
        atoms = [a for item in items for a in (item.items if isinstance(item, ast.AxisGroup) else [item])]
        for a in atoms:
            if isinstance(a, ast.AxisInt) and not 1 <= a.value <= MAX_SIZE:
                raise SpecError("E023", f"axis size {a.value} is out of range (1 to 2^{MAX_SIZE.bit_length() - 1})",
                                span)
        atom_names = [a.name if isinstance(a, ast.AxisName) else str(a.value) for a in atoms]
        if sorted(atom_names) == sorted(names) and len(set(atom_names)) == len(atom_names):
            return self._rearrange(value, t, items, atom_names, span)
        if len(items) != t.rank:
            raise SpecError("E018", f"cannot view {self.el.show(t)} as [{_items_text(items)}]: it has "
                            f"{t.rank} axes and the annotation lists {len(items)}; to rearrange, name every axis "
                            "exactly once", span)
        out: list[Axis] = []
        for item, axis in zip(items, t.axes, strict=True):
            if isinstance(item, ast.AxisGroup):
                out.extend(self._split(axis, item, span))
            else:
                out.append(self._relabel(axis, item, span))
        new = TensorType(tuple(out), t.dtype)
        if new == t:
            return value
        return self.emit("rearrange", [value.node], {"perm": tuple(range(t.rank)), "axes": new.axes}, span,
                         hint=self.graph[value.node].name)

    def _rearrange(self, value: TensorValue, t: TensorType, items: list[ast.AxisItem], atoms: list[str],
                   span: Span) -> TensorValue:
        perm = tuple(t.names.index(a) for a in atoms)
        out: list[Axis] = []
        for item in items:
            if isinstance(item, ast.AxisGroup):
                members = [t.axes[t.names.index(a.name if isinstance(a, ast.AxisName) else str(a.value))]
                           for a in item.items]
                size = sympy.Mul(*[m.size for m in members])
                out.append(Axis(str(size), size) if len(members) > 1 else members[0])
            else:
                out.append(t.axes[t.names.index(item.name if isinstance(item, ast.AxisName) else str(item.value))])
        if perm == tuple(range(t.rank)) and tuple(out) == t.axes:
            return value
        return self.emit("rearrange", [value.node], {"perm": perm, "axes": tuple(out)}, span,
                         hint=self.graph[value.node].name)

    def _relabel(self, axis: Axis, item: ast.AxisName | ast.AxisInt, span: Span) -> Axis:
        if isinstance(item, ast.AxisInt):
            want: sympy.Expr | None = sympy.Integer(item.value)
            name = str(item.value)
        else:
            name = item.name
            want = self._size_of(name, span)
        if want is not None:
            verdict = self.sizes.equal(want, axis.size)
            if verdict is False:
                raise SpecError("E012", f"axis {axis.name} has size {self.sizes.describe(axis.size)}, but "
                                f"'{name}' is {self.sizes.describe(want)}", span)
            if verdict is None:  # e.g. relabelling N as the free dim K: keep N's size, check K == N when run
                self.sizes.assume(sympy.Eq(want, axis.size), f"{want} == {axis.size}")
                self._take_guards(span)
                return Axis(name, axis.size)
            return Axis(name, want if name in self.sizes.declared or name in self.sizes.free else axis.size)
        return Axis(name, axis.size)

    def _split(self, axis: Axis, group: ast.AxisGroup, span: Span) -> list[Axis]:
        known: list[sympy.Expr | None] = []
        for atom in group.items:
            if isinstance(atom, ast.AxisInt):
                known.append(sympy.Integer(atom.value))
            else:
                known.append(self._size_of(atom.name, span))
        unknown = [i for i, k in enumerate(known) if k is None]
        names = [a.name if isinstance(a, ast.AxisName) else str(a.value) for a in group.items]
        if len(unknown) > 1:
            raise SpecError("E018", f"cannot split {axis.name} into ({' '.join(names)}): the sizes of "
                            f"{' and '.join(names[i] for i in unknown)} are both unknown; name a dim for all but one",
                            span)
        product = sympy.Mul(*[k for k in known if k is not None])
        total = self.sizes.concrete(axis.size)
        part = self.sizes.concrete(product)
        if unknown:
            if total.is_Number and part.is_Number and (total % part) != 0:
                raise SpecError("E014", f"cannot split axis {self.sizes.describe(axis.size)} into "
                                f"({' '.join(names)}): {total} is not divisible by {part}", span)
            known[unknown[0]] = sympy.cancel(axis.size / product)
            if not (total.is_Number and part.is_Number):
                self.sizes.assume(sympy.Eq(sympy.Mod(axis.size, product), 0),
                                  f"{axis.size} % {product} == 0")
                self._take_guards(span)
        elif self.sizes.equal(axis.size, product) is None:
            self.sizes.assume(sympy.Eq(axis.size, product), f"{axis.size} == {product}")
            self._take_guards(span)
        elif self.sizes.equal(axis.size, product) is False:
            raise SpecError("E014", f"cannot split axis {self.sizes.describe(axis.size)} into ({' '.join(names)}) "
                            f"= {self.sizes.concrete(product)}", span)
        return [Axis(n, k) for n, k in zip(names, known, strict=True)]  # type: ignore[arg-type]

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

    # ---- parameters and scopes ----
    def claim_scope(self, explicit: str | None, default: str, span: Span) -> str:
        if explicit is not None:
            if explicit in self.scopes:
                err = SpecError("E024", f"name '{explicit}' is already used for parameters in this scope", span)
                first = self.scopes[explicit]
                raise err.with_note("first used here", first) if first is not None else err
            self.scopes[explicit] = span
            return explicit
        n = 0
        name = default
        while name in self.scopes:
            n += 1
            name = f"{default}_{n}"
        self.scopes[name] = span
        return name

    def param(self, scope: str, local: str, axes: tuple[Axis, ...], init: tuple[Any, ...], span: Span,
              dtype: DType = DType.float32) -> TensorValue:
        path = f"{scope}.{local}"
        t = TensorType(axes, dtype)
        node = self.emit("param", [], {"path": path, "type": t, "init": init}, span, hint=path.replace(".", "_"))
        self.params[path] = node.node
        return node

    def buffer(self, scope: str, local: str, axes: tuple[Axis, ...], init: tuple[Any, ...], span: Span,
               dtype: DType = DType.float32, persistent: bool = True) -> TensorValue:
        path = f"{scope}.{local}"
        t = TensorType(axes, dtype)
        return self.emit("buffer", [], {"path": path, "type": t, "init": init, "persistent": persistent}, span,
                         hint=path.replace(".", "_"))

    def scope_kwarg(self, call: ast.Call) -> str | None:
        for kw in call.kwargs:
            if kw.name == "name":
                if not isinstance(kw.value, ast.Name):
                    raise SpecError("E026", "name= takes a plain identifier, as in name=c_attn", kw.value.span)
                check_identifier(kw.value.id, kw.value.span, "parameter scope name")
                return kw.value.id
        return None

    # ---- blocks ----
    def block_binding(self, decl: BlockDecl, call: ast.Call) -> tuple[list[str], Graph]:
        """Evaluate a call's arguments against the block's signature; return the tensor inputs and the
        template for this binding (built on first use)."""
        sig = decl.signature
        params = sig.params
        if len(call.args) > len(params):
            raise SpecError("E019", f"block '{sig.name}' takes {len(params)} argument"
                            f"{'s' if len(params) != 1 else ''}, got {len(call.args)}", call.span)
        args: dict[str, ast.Expr] = {p.name: a for p, a in zip(params, call.args, strict=False)}
        names = [p.name for p in params]
        for kw in call.kwargs:
            if kw.name == "name":
                continue
            if kw.name not in names:
                hint = difflib.get_close_matches(kw.name, names + ["name"], n=1)
                raise SpecError("E016", f"block '{sig.name}' has no parameter '{kw.name}'" +
                                (f"; did you mean '{hint[0]}'?" if hint else ""), kw.span)
            if kw.name in args:
                raise SpecError("E019", f"parameter '{kw.name}' given twice", kw.span)
            args[kw.name] = kw.value
        bound: list[tuple[str, Any]] = []
        tensors: list[str] = []
        for p in params:
            if p.name in args:
                value = self.eval(args[p.name])
                where = args[p.name].span
            elif p.default is not None:
                value = self.el.static_eval(p.default, allow_free=False)
                where = p.default.span
            else:
                raise SpecError("E019", f"block '{sig.name}' needs argument '{p.name}'", call.span)
            if p.axes is not None:
                try:
                    value = self.annotate(self.as_tensor(value, where), p.axes, where)
                except SpecError as err:  # the argument does not fit the declared axes: show the declaration
                    raise err.with_note(f"block '{sig.name}' declares its parameter here", p.span) from None
            if isinstance(value, TensorValue):
                tensors.append(value.node)
                bound.append((p.name, self.type_of(value)))
            elif isinstance(value, (FuncRef, TupleValue)):
                raise SpecError("E026", f"block arguments are tensors or values, got {kind_of(value)}", where)
            else:
                bound.append((p.name, value))
        return tensors, self.el.template(decl, bound, call.span)

    def call_block(self, decl: BlockDecl, call: ast.Call) -> Any:
        tensors, template = self.block_binding(decl, call)
        scope = self.claim_scope(self.scope_kwarg(call), decl.signature.name, call.span)
        result = template.output_type()
        value = self.emit("call", tensors, {"block": template.name, "scope": scope,
                                            "params": tuple(self.graph[t].type for t in tensors),
                                            "result": result}, call.span, hint=scope)
        if isinstance(result, tuple):
            return TupleValue(tuple(self.emit("getitem", [value.node], {"index": i}, call.span)
                                    for i in range(len(result))))
        return value


_GUARD_NODES = (sympy.Symbol, sympy.Integer, sympy.Rational, sympy.Add, sympy.Mul, sympy.Pow, sympy.Mod, sympy.floor,
                sympy.Min, sympy.Max, sympy.core.relational.Relational, sympy.And, sympy.Or, sympy.Not,
                sympy.logic.boolalg.BooleanAtom)


def _guard_form(fact: sympy.Basic, span: Span) -> sympy.Basic:
    """A requirement kept for run time, in integer arithmetic on sizes (`+ - * / // % **`, min, max, comparisons,
    and/or/not), which every backend can write as code. A float that is an integer (`0.0`) becomes one."""
    floats = {f: sympy.Integer(int(f)) for f in fact.atoms(sympy.Float) if float(f).is_integer()}
    fact = fact.xreplace(floats) if floats else fact
    for node in sympy.preorder_traversal(fact):
        bad = not isinstance(node, _GUARD_NODES) or (isinstance(node, sympy.Pow) and not node.exp.is_Integer)
        if bad:
            raise SpecError("E026", f"a requirement checked at run time may use only integer arithmetic on sizes "
                            f"(+ - * / // % **, min, max); {node} is not", span)
    return fact


DTYPE_LIMITS: dict[DType, float] = {DType.int32: 2 ** 31, DType.int64: 2 ** 63, DType.float16: 65504.0,
                                    DType.bfloat16: 3.3895313892515355e38, DType.float32: 3.4028234663852886e38}


def fits_dtype(value: bool | int | float, dtype: DType) -> bool:
    """Whether a constant is representable in `dtype` (infinities and NaN are, in a float dtype)."""
    if dtype == DType.bool or isinstance(value, bool):
        return True
    if dtype.is_int:
        return float(value).is_integer() and -DTYPE_LIMITS[dtype] <= value < DTYPE_LIMITS[dtype]
    return not math.isfinite(value) or abs(value) <= DTYPE_LIMITS[dtype]


def _number(e: ast.Num) -> Any:
    """A number literal: an exact integer (within +-2^62) or a float."""
    if isinstance(e.value, int):
        if e.value > static.MAX_MAGNITUDE:
            raise SpecError("E023", f"integer {e.value} is out of range (|x| > 2^62)", e.span)
        return sympy.Integer(e.value)
    return e.value


def _condition(value: Any, op: str, span: Span) -> Any:
    """An operand of `and`, `or`, `not` in static arithmetic: true/false or a comparison, never a size."""
    if isinstance(value, (bool, sympy.logic.boolalg.BooleanAtom, sympy.logic.boolalg.BooleanFunction,
                          sympy.core.relational.Relational)):  # not just Boolean: a sympy Symbol is one too
        return value
    raise SpecError("E026", f"'{op}' takes true/false or comparisons, got {kind_of(value)}", span)


def _canonical(fact: sympy.Basic) -> sympy.Basic:
    if isinstance(fact, sympy.Eq):
        diff = sympy.expand(fact.lhs - fact.rhs)
        return -diff if diff.could_extract_minus_sign() else diff
    return fact


def _float_op(op: str, x: float, y: float) -> float:
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if op == "/":
        return x / y
    if op == "**":
        return float(x ** y)
    if op == "//":
        return float(x // y)
    if op == "%":
        return x % y
    raise ValueError(op)


def _dotted(e: ast.Expr) -> str | None:
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Attr):
        base = _dotted(e.value)
        return None if base is None else f"{base}.{e.name}"
    return None


def _target_name(t: ast.Expr) -> str:
    name = t.value if isinstance(t, ast.Annotate) else t
    assert isinstance(name, ast.Name)
    return name.id


def _items_text(items: list[ast.AxisItem]) -> str:
    def one(i: ast.AxisItem) -> str:
        if isinstance(i, ast.AxisGroup):
            return "(" + " ".join(one(x) for x in i.items) + ")"
        return i.name if isinstance(i, ast.AxisName) else str(i.value)
    return ", ".join(one(i) for i in items)
