"""Blocks: a call binds its arguments to the block's signature, and each distinct binding (argument types and
static values) gets one template, a `Graph` built once from the block's statements and shared by every call with
that binding, so nothing is unrolled. `Builder` is the complete graph builder: blocks on statements on expressions
on nodes."""

from __future__ import annotations

import difflib
from typing import Any

import sympy

from nnspec.compiler.elaborate.limits import MAX_BLOCK_DEPTH
from nnspec.compiler.elaborate.signature import Signature, caller_axes
from nnspec.compiler.elaborate.statements import StatementBuilder
from nnspec.compiler.elaborate.values import FuncRef, TensorValue, TupleValue, kind_of
from nnspec.compiler.ir import Graph, TensorType
from nnspec.errors import SpecError
from nnspec.spec import ast
from nnspec.spec.load import BlockDecl
from nnspec.spec.source import Span


class Builder(StatementBuilder):
    """Builds one graph (a template or the body) from statements: variables, scopes, parameters, block calls."""

    def block_binding(self, decl: BlockDecl, call: ast.Call, index: str | None = None,
                      count: int = 1) -> tuple[list[str], list[Graph], dict[str, str]]:
        """Evaluate a call's arguments against the block's signature; return the tensor inputs, the template for
        this binding (built on first use) and the signature's names in the caller's terms (`Signature.to_caller`).
        With `index` (a parameter of the block that the call leaves out: `repeat(..., index=i)`), there is one
        template per iteration 0..count-1, `index` bound to it, and iterations that build the same graph share
        one template: the list holds iteration k's template at k. Without, the list holds the one template.

        The signature's axis names and parameters are local to the call: they are bound from this call's arguments
        and never enter the caller's one-size-per-name table, so a block may be called at several sizes in one
        scope. In a spec's own block a declared dim in an annotation is a check; in a library block every name in
        the signature is the block's own."""
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
        local = Signature(self, library=self.is_library(decl))
        bound: list[tuple[str, Any]] = []
        tensors: list[str] = []
        for p in params:
            if p.name == index:
                continue
            if p.name in args:
                value = self.eval(args[p.name])
                where = args[p.name].span
            elif p.default is not None:
                value = self.el.static_eval(p.default, allow_free=False)
                where = p.default.span
            else:
                raise SpecError("E019", f"block '{sig.name}' needs argument '{p.name}'", call.span)
            if isinstance(value, TensorValue):
                try:
                    value = local.bind_tensor(value, p.axes, where)
                except SpecError as err:  # the argument does not fit the declared axes: show the declaration
                    raise err.with_note(f"block '{sig.name}' declares its parameter here", p.span) from None
                tensors.append(value.node)
                bound.append((p.name, self.type_of(value)))
            elif p.axes is not None:
                raise SpecError("E026", f"block '{sig.name}' declares '{p.name}' a tensor, got {kind_of(value)}",
                                where).with_note("declared here", p.span)
            elif isinstance(value, (FuncRef, TupleValue)):
                raise SpecError("E026", f"block arguments are tensors or values, got {kind_of(value)}", where)
            else:
                local.bind_value(p.name, value, args.get(p.name), where)
                bound.append((p.name, value))
        bound += local.solved.items()   # sizes the block's annotations imply: names in its body, as parameters are
        if index is None:
            templates = [self.template(decl, bound, call.span)]
        else:
            templates = self._iteration_templates(decl, bound, index, count, call.span)
        tensors += [self.model_input(name, call.span).node for name in templates[0].meta.get("captures", ())]
        return tensors, templates, local.to_caller

    def _iteration_templates(self, decl: BlockDecl, bound: list[tuple[str, Any]], index: str, count: int,
                             span: Span) -> list[Graph]:
        """Iteration k's template, `index` bound to k. A template that builds the same graph as an earlier
        iteration's is dropped (with the templates it built) in favour of that one, so `i % 2` makes two classes,
        not one per layer; iterations must agree on what they take and return, as one loop runs them all."""
        el = self.el
        distinct: list[Graph] = []
        out: list[Graph] = []
        for k in range(count):
            before, keys_before = set(el.templates), set(el.template_keys)
            t = self.template(decl, [*bound, (index, sympy.Integer(k))], span)
            same = next((d for d in distinct if same_template(d, t, el.templates)), None)
            if same is None:
                if distinct and (t.meta.get("captures") != distinct[0].meta.get("captures")
                                 or [t[i].type for i in t.inputs] != [distinct[0][i].type for i in distinct[0].inputs]):
                    raise SpecError("E026", f"repeat: iteration {k} of block '{decl.signature.name}' reads other "
                                    "model inputs or takes other types than iteration 0; one loop runs them all", span)
                distinct.append(t)
                out.append(t)
                continue
            for name in set(el.templates) - before:
                del el.templates[name]
            for key in set(el.template_keys) - keys_before:
                del el.template_keys[key]
            out.append(same)
        return out

    def is_library(self, decl: BlockDecl) -> bool:
        """A block from an included file: the including spec's dims do not reach into its signature."""
        return decl.span.source is not self.el.spec.source

    def call_block(self, decl: BlockDecl, call: ast.Call) -> Any:
        tensors, (template,), to_caller = self.block_binding(decl, call)
        scope = self.claim_scope(self.scope_kwarg(call), decl.signature.name, call.span)
        result = template.output_type()
        attrs = {"block": template.name, "scope": scope, "params": tuple(self.graph[t].type for t in tensors),
                 "result": result}
        if isinstance(result, tuple):
            value = self.emit("call", tensors, attrs, call.span, hint=scope)
            return TupleValue(tuple(self.in_caller_terms("getitem", [value.node], {"index": i}, call.span,
                                                          to_caller, None) for i in range(len(result))))
        return self.in_caller_terms("call", tensors, attrs, call.span, to_caller, scope)

    def in_caller_terms(self, op: str, inputs: list[str], attrs: dict[str, Any], span: Span,
                        to_caller: dict[str, str], hint: str | None) -> TensorValue:
        """Emit a block's result (a call, repeat or tuple member) under the caller's axis names: a name the
        signature bound becomes the caller's name for it, a dim keeps its name, and a name the block made up
        (`x[B, C]` inside it) becomes its size's name (`3*d`), as an axis sized by an expression is named. When
        that renames anything, the block's own names never reach the caller's name table: a relabel follows."""
        value = self.emit(op, inputs, attrs, span, hint=hint, record=False)
        t = self.type_of(value)
        axes = caller_axes(t, to_caller, self.sizes)
        if axes == t.axes:
            self._record_axes(t, span)
            return value
        return self.emit("rearrange", [value.node], {"perm": tuple(range(t.rank)), "axes": axes}, span,
                         hint=self.graph[value.node].name)

    def model_input(self, name: str, span: Span) -> TensorValue:
        """A model input read inside a block: the body passes its input node; a template takes it as an extra
        parameter of its own (after its declared ones), which each of its calls passes on."""
        if "block" not in self.graph.meta:
            return TensorValue(self.el.input_nodes[name])
        captured = self.graph.meta.setdefault("captures", [])
        if name not in captured:
            captured.append(name)
            node = self.emit("input", [], {"name": name, "type": self.el.input_types[name]}, span, hint=name)
            self.captured[name] = node
        return self.captured[name]

    def template(self, decl: BlockDecl, args: list[tuple[str, Any]], span: Span) -> Graph:
        """The template of `decl` for this binding of its parameters, built (in a builder of its own) on first use."""
        el = self.el
        key = (decl.signature.name, tuple((n, v if not isinstance(v, sympy.Basic) else str(v)) for n, v in args))
        if key in el.template_keys:
            return el.template_keys[key]
        name = decl.signature.name
        if len(el.building) >= MAX_BLOCK_DEPTH:
            raise SpecError("E005", f"blocks call blocks more than {MAX_BLOCK_DEPTH} deep "
                            f"({' -> '.join(el.building[:3])} -> ... -> {name})", span)
        if name in el.building:
            raise SpecError("E020", f"block '{name}' calls itself (through {' -> '.join(el.building)}); "
                            "use repeat(...) for depth", span)
        graph = Graph(el.template_name(name))
        graph.meta["block"] = name
        el.building.append(name)
        try:
            b = Builder(el, graph)
            b.library = self.is_library(decl)
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
            el.building.pop()
        el.templates[graph.name] = graph
        el.template_keys[key] = graph
        return graph


def same_template(a: Graph, b: Graph, templates: dict[str, Graph]) -> bool:
    """Do two templates build the same graph: their nodes alike in name, op, inputs, attrs and type, and the blocks
    they run alike in turn (a template's own name aside)?"""
    if a.inputs != b.inputs or a.outputs != b.outputs or len(a.nodes) != len(b.nodes) \
            or a.meta.get("captures") != b.meta.get("captures"):
        return False
    for x, y in zip(a, b, strict=True):
        if (x.name, x.op, x.inputs, x.type, x.attrs.keys()) != (y.name, y.op, y.inputs, y.type, y.attrs.keys()):
            return False
        for key, v in x.attrs.items():
            w = y.attrs[key]
            if v != w and not (key == "block" and same_template(templates[v], templates[w], templates)):
                return False
    return True
