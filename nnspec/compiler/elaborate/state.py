"""What elaboration knows model-wide while it builds graphs: dim sizes, option values, the block templates built so
far, the run-time guards, and the counters behind the limits. Every `Builder` of one model shares one."""

from __future__ import annotations

from typing import Any

import sympy

from nnspec.compiler.elaborate.dims import bind_dims, bind_free, bind_options
from nnspec.compiler.elaborate.guards import GuardList
from nnspec.compiler.elaborate.static_eval import CONSTANTS, evaluate, undefined
from nnspec.compiler.ir import Graph, Guard, TensorType
from nnspec.compiler.sizes import Sizes
from nnspec.spec import ast
from nnspec.spec.load import Spec
from nnspec.spec.source import Span


class ModelState:
    """Model-wide state: sizes, options, templates and guards."""

    def __init__(self, spec: Spec, overrides: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self.sizes = Sizes()
        self.templates: dict[str, Graph] = {}
        self.template_keys: dict[tuple[Any, ...], Graph] = {}   # a block and its binding -> its template
        self._template_numbers: dict[str, int] = {}
        self.building: list[str] = []   # the blocks whose templates are being built, outermost first
        self.guards: list[Guard] = GuardList()
        self.node_count = 0
        self.param_tensors: dict[int, int] = {}  # id(graph) -> its parameter tensors, unrolled
        self.block_modules: dict[int, int] = {}  # id(graph) -> the block modules building it creates, unrolled
        self.input_nodes: dict[str, str] = {}   # model input -> its node in the body (blocks may read it)
        self.input_types: dict[str, TensorType] = {}
        overrides = dict(overrides or {})
        self.options = bind_options(spec.options, overrides)
        bind_dims(spec.dims, overrides, self.sizes, lambda e: self.concrete(self.static_eval(e, allow_free=False)))
        for name, value in overrides.items():  # what is left binds free dims
            bind_free(spec, self.sizes, name, value)

    def lookup_static(self, name: str, span: Span, allow_free: bool) -> Any:
        if name in self.sizes.declared:
            return self.sizes.declared[name]
        if name in self.options:
            return self.options[name]
        if name in CONSTANTS:
            return CONSTANTS[name]
        if allow_free:
            return self.sizes.free_symbol(name)
        raise undefined(name, span, [*self.sizes.declared, *self.options], size=True)

    def static_eval(self, expr: ast.Expr, allow_free: bool) -> Any:
        """`expr`'s value from dims, options and constants (and free dims, where `allow_free`)."""
        return evaluate(expr, lambda name, span: self.lookup_static(name, span, allow_free), self.sizes.concrete)

    def concrete(self, v: Any) -> Any:
        return self.sizes.concrete(v) if isinstance(v, sympy.Basic) else v

    def template_name(self, block: str) -> str:
        """`mlp`, then `mlp_2`, `mlp_3`, ... for more bindings; never a name another template or block has."""
        n = self._template_numbers.get(block, 0)
        while True:
            n += 1
            name = block if n == 1 else f"{block}_{n}"
            if name not in self.templates and (name == block or name not in self.spec.blocks):
                self._template_numbers[block] = n
                return name
