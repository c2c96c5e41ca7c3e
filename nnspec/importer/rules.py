"""The lifting rules the `Lifter` dispatches to, gathered here so that `lift` imports none of them (they import
`lift` for its types)."""

from __future__ import annotations

from types import SimpleNamespace

from nnspec.importer import leaves, ops, patterns

RULES = SimpleNamespace(static_value=patterns.static_value, getitem=ops.getitem, lift_leaf=leaves.lift_leaf,
                        match=patterns.match, lift_op=ops.lift_op)
