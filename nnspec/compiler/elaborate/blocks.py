"""Blocks: a call binds its arguments to the block's signature, and each distinct binding (argument types and
static values) gets one template, a `Graph` built once from the block's statements and shared by every call with
that binding, so nothing is unrolled. `Builder` is the complete graph builder: blocks on statements on expressions
on nodes."""

from __future__ import annotations

import difflib
from typing import Any

import sympy

from nnspec.compiler.elaborate.limits import MAX_BLOCK_DEPTH
from nnspec.compiler.elaborate.statements import StatementBuilder
from nnspec.compiler.elaborate.values import FuncRef, TensorValue, TupleValue, kind_of
from nnspec.compiler.ir import Graph, TensorType
from nnspec.errors import SpecError
from nnspec.spec import ast
from nnspec.spec.load import BlockDecl
from nnspec.spec.source import Span


class Builder(StatementBuilder):
    """Builds one graph (a template or the body) from statements: variables, scopes, parameters, block calls."""

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
        return tensors, self.template(decl, bound, call.span)

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
