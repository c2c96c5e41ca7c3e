"""The whole model: check the `require:` lines, bind the declared inputs, run the body, and check its results
against the declared outputs. `Elaborator(spec, overrides).elaborate()` is elaboration's entry point."""

from __future__ import annotations

from typing import Any

from nnspec.compiler.elaborate.axis_rules import note_size1
from nnspec.compiler.elaborate.blocks import Builder
from nnspec.compiler.elaborate.guards import add_guard, check_requirement
from nnspec.compiler.elaborate.limits import MAX_REQUIREMENTS
from nnspec.compiler.elaborate.state import ModelState
from nnspec.compiler.elaborate.tensor_types import declared_type, same_type, show
from nnspec.compiler.elaborate.values import TensorValue, kind_of
from nnspec.compiler.ir import DType, Graph, Model
from nnspec.errors import SpecError


class Elaborator(ModelState):
    """Spec -> typed `Model`, with the spec's dims and options bound (defaults, or the overrides given)."""

    def elaborate(self) -> Model:
        spec = self.spec
        if len(spec.require) > MAX_REQUIREMENTS:
            raise SpecError("E005", f"the spec has {len(spec.require):,} requirements, more than the "
                            f"{MAX_REQUIREMENTS:,} checking takes (each is a symbolic proof)",
                            spec.require[MAX_REQUIREMENTS].span)
        for req in spec.require:
            guard = check_requirement(req.expr, req.span, lambda e: self.static_eval(e, allow_free=True),
                                      self.concrete)
            if guard is not None:
                add_guard(self.guards, self.sizes, guard)
        body = Builder(self, Graph(spec.name))
        inputs: dict[str, str] = {}
        for name, decl in spec.inputs.items():
            t = declared_type(decl.type, self.sizes, self.options)
            attrs: dict[str, Any] = {"name": name, "type": t}
            if decl.default is not None:
                if isinstance(decl.default, str):
                    raise SpecError("E004", f"input '{name}' default must be a number or true/false", decl.span)
                _check_default(name, decl.default, t, decl.span)
                attrs["default"] = decl.default
            node = body.emit("input", [], attrs, decl.span, hint=name)
            body.bind(name, node, decl.key_span)
            inputs[name] = node.node
            self.input_types[name] = t
        self.input_nodes = inputs
        body.run(spec.body)
        outputs: dict[str, str] = {}
        for name, decl in spec.outputs.items():
            want = declared_type(decl.type, self.sizes, self.options)
            value = body.vars.get(name)
            if value is None:
                raise SpecError("E021", f"output '{name}' is never assigned in the body", decl.key_span)
            if not isinstance(value, TensorValue):
                raise SpecError("E021", f"output '{name}' must be a tensor, got {kind_of(value)}", decl.key_span)
            got = body.graph[value.node].type
            if not same_type(got, want, self.sizes):
                err = SpecError("E021", f"output '{name}' is declared {show(want)} but the body computes "
                                f"{show(got)}", decl.key_span).with_note("assigned here", body.var_spans[name])
                raise note_size1(err, body.graph, [value.node])
            outputs[name] = value.node
        body.graph.outputs = list(outputs.values())
        return Model(spec.name, body.graph, self.templates, self.sizes, self.options, inputs, outputs,
                     self.guards, spec.source.name)


_INT_RANGE = {DType.int64: 63, DType.int32: 31}


def _check_default(name: str, value: Any, t: Any, span: Any) -> None:
    """An optional input's default must be a value of the input's dtype: NaN, an infinity, 1e20 or 1.5 on an int64
    input would fail (or be truncated) only when the model runs."""
    dtype = t.dtype
    if dtype == DType.bool:
        if not isinstance(value, bool):
            raise SpecError("E004", f"input '{name}' is bool: its default must be true or false, got {value!r}", span)
        return
    if dtype in _INT_RANGE:
        bits = _INT_RANGE[dtype]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not -(1 << bits) <= value < (1 << bits):
            raise SpecError("E004", f"input '{name}' is {dtype.value}: its default must be an integer from "
                            f"-2^{bits} to 2^{bits}-1, got {value!r}", span)
        return
    if isinstance(value, bool):
        raise SpecError("E004", f"input '{name}' is {dtype.value}: its default must be a number, got {value!r}", span)
