"""The lifting rules the `Lifter` dispatches to, gathered here so that `lift` imports none of them (they import
`lift` for its types)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from torch import fx

from nnspec.importer import einsum, helpers, indexing, leaves, masks, moe, ops, patterns, reuse, scan, windows
from nnspec.importer.routing import routed
from nnspec.importer.rules_extra import HANDLERS as MORE_HANDLERS

# ops lifted outside the generic table (ops.py), tried first
_EXTRA = {**MORE_HANDLERS, **einsum.HANDLERS, **masks.HANDLERS, **indexing.HANDLERS, **scan.HANDLERS,
          helpers.OP_NAMES["moe_swiglu"]: moe.lift_moe_call}


def lift_op(lifter: Any, n: fx.Node) -> Any:
    handler = _EXTRA.get(str(n.target))
    return handler(lifter, n) if handler is not None else ops.lift_op(lifter, n)


def lift_leaf(lifter: Any, path: str, n: fx.Node) -> Any:
    if reuse.again(lifter, path, n):       # a later call of a module: its parameters exist already
        return reuse.lift_again(lifter, path, n)
    r = routed(lifter.modules, path)
    return moe.lift_moe(lifter, path, n, r) if r is not None else leaves.lift_leaf(lifter, path, n)


# `windows.py`'s positional naming, which `ops` and `lift` reach through here (it imports `ops`: no cycle)
RULES = SimpleNamespace(static_value=patterns.static_value, getitem=ops.getitem, lift_leaf=lift_leaf,
                        match=patterns.match, lift_op=lift_op, align=windows.align, one_name=windows.one_name,
                        summed_alike=windows.summed_alike, second_free=windows.second_free)
