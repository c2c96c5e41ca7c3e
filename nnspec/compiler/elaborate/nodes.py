"""Building one graph's nodes: every node is typed by its op's rule as it is made (so an error points at the
user's expression), counted against the model's limits, and its undecided size facts become located guards.
On top: constants meeting tensors, arithmetic on tensors and static values, `@`, named-axis views, and the
parameters and buffers a scope owns."""

from __future__ import annotations

import difflib
import math
from typing import Any

import sympy

from nnspec.compiler import static
from nnspec.compiler.elaborate.axis_rules import note_size1, refuse_outer
from nnspec.compiler.elaborate.guards import add_guard
from nnspec.compiler.elaborate.limits import MAX_BLOCK_MODULES, MAX_NODES, MAX_PARAM_TENSORS
from nnspec.compiler.elaborate.state import ModelState
from nnspec.compiler.elaborate.values import FuncRef, TensorValue, TupleValue, kind_of
from nnspec.compiler.elaborate.views import size_expr, view
from nnspec.compiler.ir import Axis, DType, Graph, Guard, TensorType
from nnspec.compiler.ops import OPS
from nnspec.compiler.ops.elementwise import POINTWISE
from nnspec.compiler.ops.registry import Effect
from nnspec.compiler.sizes import MAX_SIZE
from nnspec.errors import SpecError
from nnspec.spec import ast
from nnspec.spec.load import check_identifier
from nnspec.spec.source import Span


class NodeBuilder:
    """Builds one graph (a template or the body): its nodes, the variables naming them, its scopes, parameters."""

    def __init__(self, el: ModelState, graph: Graph) -> None:
        self.el = el
        self.sizes = el.sizes
        self.blocks = el.spec.blocks
        self.graph = graph
        self.vars: dict[str, Any] = {}
        self._held: dict[TensorValue, int] = {}  # tensors held by variables bound with bind(), with multiplicity
        self.var_spans: dict[str, Span] = {}
        self.axis_sizes: dict[str, tuple[sympy.Expr, Span | None]] = {}
        self.scopes: dict[str, Span | None] = {}
        self.params: dict[str, str] = {}  # local parameter path -> node name
        self.library = False   # a block from an included file: its own axis names shadow the spec's dims
        self.captured: dict[str, TensorValue] = {}   # model inputs this template reads -> its input nodes
        # the axes the annotated assignment being evaluated names: an outer broadcast onto them was written down
        self.named_axes: frozenset[str] | None = None

    # ---- typed access ----
    def as_tensor(self, value: Any, span: Span) -> TensorValue:
        if not isinstance(value, TensorValue):
            raise SpecError("E026", f"expected a tensor, got {kind_of(value)}", span)
        return value

    def type_of(self, v: TensorValue) -> TensorType:
        t = self.graph[v.node].type
        assert isinstance(t, TensorType)
        return t

    def _concrete(self, v: Any) -> Any:
        return self.sizes.concrete(v) if isinstance(v, sympy.Basic) else v

    # ---- sizes of names in this block ----
    def known_size(self, name: str) -> sympy.Expr | None:
        """The size a name denotes in an annotation: a dim, a size-valued block parameter, or an axis seen here."""
        value = self.vars.get(name)  # a block parameter shadows a dim of the same name
        if isinstance(value, sympy.Basic):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            # a parameter bound to an integer option (a per-stage `heads0` read from a config list) is a size
            return sympy.Integer(value)
        local = self.local_axis(name)
        if local is not None:
            return local
        if name in self.sizes.declared:
            return self.sizes.declared[name]
        if name in self.axis_sizes:
            return self.axis_sizes[name][0]
        return self.sizes.free.get(name)

    def local_axis(self, name: str) -> sympy.Expr | None:
        """An axis seen in this block that shadows a dim: in a library block, any axis (the spec's dims are not
        its names); elsewhere an axis named like a free dim (a block called at another resolution binds `T` to
        its argument's length)."""
        if name in self.axis_sizes and (self.library or name not in self.sizes.declared):
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

    def atom_name(self, item: ast.AxisName | ast.AxisInt | ast.AxisExpr) -> str:
        """The axis name an annotation item stands for: a name, an integer, or a size expression's value."""
        if isinstance(item, ast.AxisExpr):
            return str(size_expr(item, self.sizes, self._size_of))
        return item.name if isinstance(item, ast.AxisName) else str(item.value)

    def axis(self, name: str, span: Span) -> Axis:
        """An axis named in this scope: one seen on a tensor here, or a dim."""
        if name in self.axis_sizes:
            return Axis(name, self.axis_sizes[name][0])
        sym = self.sizes.lookup(name)
        if sym is not None:
            return Axis(name, sym)
        hint = difflib.get_close_matches(name, list(self.axis_sizes), n=1)
        raise SpecError("E017", f"unknown axis '{name}'" + (f"; did you mean '{hint[0]}'?" if hint else ""), span)

    # ---- building nodes ----
    def emit(self, op: str, inputs: list[str], attrs: dict[str, Any], span: Span | None,
             hint: str | None = None, record: bool = True) -> TensorValue:
        """Add a node with its inferred type. `record=False` leaves its axis names out of the block's
        one-size-per-name table: for an operand relabelled only to line up with another inside one op."""
        opdef = OPS[op]
        if isinstance(opdef.arity, tuple) and len(inputs) > opdef.arity[1]:
            # the op's own bound (concat of 65 tensors, a contraction of 9 factors), said where it is written
            raise SpecError("E019", f"{op} takes at most {opdef.arity[1]} operands, got {len(inputs)}", span)
        try:
            t = opdef.infer([self.graph[i].type for i in inputs], attrs, self.sizes)
        except SpecError as err:
            if err.span is None:
                err.span = span
            raise note_size1(err, self.graph, inputs) from None
        self._take_guards(span)
        if OPS[op].has("state"):
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
        if OPS[op].has("state"):
            n = 1
        elif OPS[op].effect is Effect.OWNS_STATE:   # a block call: its parameter tensors
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
        if OPS[op].effect is Effect.OWNS_STATE:
            self._count_block_modules(op, attrs, span)

    def _count_block_modules(self, op: str, attrs: dict[str, Any], span: Span | None) -> None:
        """Block instances of this graph with its calls and repeats unrolled (each iteration of a repeat that does
        not share its weights is a module of its own), in closed form."""
        n = 1 + self.el.block_modules.get(id(self.el.templates[attrs["block"]]), 0)
        if op == "repeat" and not attrs["shared"]:
            n *= attrs["count"]
        total = self.el.block_modules.get(id(self.graph), 0) + n
        self.el.block_modules[id(self.graph)] = total
        if total > MAX_BLOCK_MODULES:
            raise SpecError("E005", f"the model has more than {MAX_BLOCK_MODULES:,} block instances once its "
                            f"repeats are unrolled ({total:,} here); building it would create a module for each",
                            span)

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
            add_guard(self.el.guards, self.sizes, Guard(fact, text, span))
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
        if dtype.is_int and not static.fits_dtype(py, dtype):  # torch refuses it (a float constant overflows to inf)
            raise SpecError("E023", f"constant {py} does not fit the {dtype} tensor it meets", span)
        return self.emit("const", [], {"value": py, "type": TensorType((), dtype)}, span, hint="const")

    # ---- arithmetic ----
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
        refuse_outer(self.graph, nodes, f"'{POINTWISE[op].formula}'" if op in POINTWISE else op, self.named_axes,
                     span)
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
                result = static.float_op(op, fx, fy)
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

    def annotate(self, value: TensorValue, items: list[ast.AxisItem], span: Span) -> TensorValue:
        """`value[items]`: a named-axis view (see views.py)."""
        try:
            rearrange = view(self.type_of(value), items, span, self.sizes, self._size_of, self._take_guards)
        except SpecError as err:
            raise note_size1(err, self.graph, [value.node]) from None
        if rearrange is None:
            return value
        perm, axes = rearrange
        return self.emit("rearrange", [value.node], {"perm": perm, "axes": axes}, span,
                         hint=self.graph[value.node].name)

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
