"""Edits the optimiser's passes and the transforms both make: copying a model to rewrite, and erasing the nodes
nothing uses. One copy and one dead-code rule, so an optimised model and a transformed one are made alike.
"""

from __future__ import annotations

import copy
from collections.abc import Collection

from nnspec.compiler.ir import Graph, Model, Node
from nnspec.compiler.ops import OPS
from nnspec.compiler.sizes import Sizes


def copy_model(model: Model) -> Model:
    """An independent copy to rewrite: graphs cloned, node meta, sizes and the model's lists and dicts copied;
    node attrs and types are immutable values, shared."""
    out = copy.copy(model)
    out.graph = model.graph.clone()
    out.templates = {name: g.clone() for name, g in model.templates.items()}
    out.dims = Sizes(dict(model.dims.values), dict(model.dims.free), dict(model.dims.declared), [])
    out.inputs, out.outputs = dict(model.inputs), dict(model.outputs)
    out.guards = list(model.guards)
    out.weight_maps = dict(model.weight_maps)
    out.transforms = list(model.transforms)
    for g in out.graphs():
        for node in g:
            node.meta = copy.deepcopy(node.meta)
    return out


def erase_unused(graph: Graph, *, with_state: bool = False, among: Collection[str] | None = None) -> list[Node]:
    """Erase the nodes whose values nothing uses (never a graph input or output); returns them, users first.

    By default only what the op table calls removable goes (pure ops and random draws): parameters, buffers,
    block calls and stateful ops stay, so the state dict is the same at every optimisation level. With
    `with_state` they go too: what `--drop` wants, whose contract is that a removed branch takes its parameters
    with it. `among` limits the erasing to those nodes (`--drop` erases what the removed branch read, not code
    that was unused before it). One pass over the node order (topological) suffices: a node's users are
    visited before it.
    """
    removed: list[Node] = []
    for node in reversed(list(graph)):
        if node.name in graph.inputs or node.name in graph.outputs or graph.users(node.name):
            continue
        if among is not None and node.name not in among:
            continue
        if with_state or OPS[node.op].removable:
            graph.erase(node.name)
            removed.append(node)
    return removed
