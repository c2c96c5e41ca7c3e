"""Which sizes of a view the model wrote as constants and which it computed from an input's size.

A static export records `x.reshape(N, 2, L // 2, C)` at `L = 4` as `[5, 2, 2, 9]`: the two pieces of `L` have one
size, and which is the fixed one (`2`) and which the count that follows `L` cannot be told from sizes. The model is
exported once more with its free sizes symbolic (as its `dynamic_shapes()` says, nnspec's generated modules; else
each input dim of a free example size), only when such a split is met; there a view's computed sizes are graph
nodes and its constants ints. Node names of the two exports agree (one trace of one forward), so the answer is
looked up by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from nnspec.importer.helpers import helpers_as_calls

if TYPE_CHECKING:
    from torch import fx

    from nnspec.importer.lift import Lifter

_VIEWS = ("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default")


def fixed_sizes(lifter: Lifter, n: fx.Node) -> list[bool] | None:
    """Per target dim of view `n`: whether the model wrote it as a constant; None where it cannot be told (a model
    without `dynamic_shapes()`, an export that fails with its sizes symbolic, a view not found again)."""
    table = lifter.__dict__.get("view_constants")
    if table is None:
        table = lifter.__dict__["view_constants"] = _views_of_dynamic_export(lifter)
    return table.get(n.name)


def _views_of_dynamic_export(lifter: Lifter) -> dict[str, list[bool]]:
    cap = lifter.cap
    own = getattr(cap.model, "dynamic_shapes", None)
    shapes = own() if callable(own) else _free_dims(cap.inputs, set(lifter.dims.free))
    try:
        with helpers_as_calls(cap.model):     # as `capture` exported it, so that node names agree
            program = torch.export.export(cap.model, (), dict(cap.inputs), dynamic_shapes=shapes, strict=False)
    except Exception:  # a guard the example sizes cannot satisfy symbolically: no answer, sizes decide as before
        return {}
    out: dict[str, list[bool]] = {}
    for node in program.graph.nodes:
        if str(node.target) in _VIEWS and len(node.args) > 1 and isinstance(node.args[1], (list, tuple)):
            out[node.name] = [isinstance(s, int) for s in node.args[1]]
    return out


def _free_dims(inputs: dict[str, torch.Tensor], free: set[int]) -> dict[str, dict[int, object]]:
    """Any other model: each input dim of a free size (the batch, the sequence) left for export to make symbolic
    (`Dim.AUTO`: kept static where the model needs it so, instead of failing)."""
    return {k: {d: torch.export.Dim.AUTO for d, size in enumerate(v.shape) if int(size) in free}
            for k, v in inputs.items() if isinstance(v, torch.Tensor)}
