"""What the emitters and the member planner may ask of the file being generated (`ModuleContext`): the model,
the backend options, module-level names, the runtime helpers used so far, the `--explain` notes, and which
graphs draw random numbers or update state. `codegen.ModuleGen` builds on it to print the file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import ClassVar

import sympy

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.helpers import HELPERS
from nnspec.backends.torch.nn_module_attrs import NN_MODULE_ATTRS
from nnspec.backends.torch.options import TorchOptions
from nnspec.backends.torch.pysrc import Expr
from nnspec.backends.torch.source import Names, camel, owns_block, refuse
from nnspec.compiler.ir import Graph, Model, Node
from nnspec.compiler.ops import OPS
from nnspec.compiler.ops.registry import Effect

# module-level names of every generated file
GLOBALS = frozenset({"torch", "nn", "F", "WEIGHT_MAPS", "OPTIONS"})
# attributes a scope or parameter must not take on a generated class
RESERVED_ATTRS = NN_MODULE_ATTRS | {"reset_parameters", "dynamic_shapes", "weight_maps", "decode_step"}


class ModuleContext:
    """The state of one generated file that its functions share. `label` is what the header says the file was
    optimised with (`-O2`, `-O2, passes cse,dce`); `options` how the emitters may write code."""

    reserved_globals: frozenset[str] = frozenset()   # module-level names a subclass's file defines
    # op -> emitter(FunctionGen, node, input expressions) -> expression; the concrete generator binds the table
    emitters: ClassVar[Mapping[str, Callable[..., Expr | None]]]

    def __init__(self, model: Model, *, spec_text: str, doc: str | None, label: str,
                 options: TorchOptions | None = None) -> None:
        self.model, self.doc, self.label = model, doc, label
        self.options = options if options is not None else TorchOptions()
        self.spec_hash = hashlib.sha256(spec_text.encode("utf-8")).hexdigest()
        self.globals = Names(GLOBALS | P.BUILTIN_NAMES | set(HELPERS) | self.reserved_globals)
        self.helpers: dict[str, None] = {}
        self.dim_names: dict[sympy.Symbol, str] = {}
        declared = list(model.dims.declared)
        for sym in sorted(model.dims.values, key=lambda s: (s.name not in declared,
                                                            declared.index(s.name) if s.name in declared else 0,
                                                            s.name)):
            self.dim_names[sym] = self.globals.fresh(sym.name.upper())
        self.order = self._template_order()
        self.model_class = self.globals.fresh(camel(model.name))
        self.class_names = {name: self.globals.fresh(camel(name)) for name in self.order}
        self._effectful: dict[str, bool] = {}
        self.explain: list[str] = []     # what the backend chose, for `--explain`

    def note(self, line: str) -> None:
        if line not in self.explain:
            self.explain.append(line)

    def _template_order(self) -> list[str]:
        """Templates the model uses, callees before callers (depth-first post-order)."""
        out: list[str] = []

        def visit(graph: Graph) -> None:
            for node in graph:
                for block in blocks_run(node):
                    if block not in out:
                        visit(self.model.templates[block])
                        if block not in out:
                            out.append(block)
        visit(self.model.graph)
        return out

    def graph_effectful(self, graph: Graph) -> bool:
        """Does running the graph draw random numbers or update state?"""
        if graph.name not in self._effectful:
            self._effectful[graph.name] = any(self.node_effectful(n) for n in graph)
        return self._effectful[graph.name]

    def node_effectful(self, node: Node) -> bool:
        """Random or stateful (never reordered): as the op table says, a block by what it runs, and attention
        with dropout on its probabilities."""
        if owns_block(node):
            return any(self.graph_effectful(self.model.templates[b]) for b in blocks_run(node))
        return OPS[node.op].effect in (Effect.RANDOM, Effect.STATEFUL) or \
            (node.op == "attention" and node.attrs.get("dropout", 0.0) > 0)

    def helper(self, name: str) -> Expr:
        """The runtime helper `name` (defined in the file, with what it calls, once used)."""
        for dep in HELPERS[name]:
            self.helper(dep)
        self.helpers[name] = None
        return P.Name(name)

    def check_attr(self, what: str, name: str, node: Node) -> None:
        if not P.is_identifier(name):
            raise refuse(what, name, "it is not a Python identifier", node.span)
        if name in RESERVED_ATTRS:
            raise refuse(what, name, "it is an attribute of torch.nn.Module", node.span)


__all__ = ["GLOBALS", "RESERVED_ATTRS", "ModuleContext"]


def blocks_run(node: Node) -> list[str]:
    """The templates a node runs: a call's or scan's block, a repeat's block and its iterations' variants."""
    if not owns_block(node):
        return []
    return list(dict.fromkeys([node.attrs["block"], *(b for _, b in node.attrs.get("variants", ()))]))
