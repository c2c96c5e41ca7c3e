"""A leaf module called more than once (one `nn.Linear` applied to several inputs, its weights shared).

The language creates a call's parameters where the call is written (`linear(x, n, name=proj)`); writing the
same call again would create them twice (E024). The first call is written as usual; a later call of an
`nn.Linear` in the same call of its parent block reads the first call's parameters by name, as the contraction
`h[..., out] = x2 * proj.weight (+ proj.bias)`, its input's last axis named as the first input's (the weight's
input axis), and checked on the captured values. Any other module called again (a norm, an embedding), or a call
from another call of its parent (a whole block applied repeatedly with shared weights) is refused with the op and
module path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import fx, nn

from nnspec.importer.graph import L
from nnspec.importer.leaves import _check, _inputs, _merge_last, _region

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter


def _first(lifter: Lifter, path: str) -> fx.Node:
    return next(m for m in lifter.graph.nodes if path in lifter.stack(m))


def again(lifter: Lifter, path: str, n: fx.Node) -> bool:
    """`n` is computed by a later call of `path` than its first."""
    return lifter.calls(n).get(path) != lifter.calls(_first(lifter, path)).get(path)


def lift_again(lifter: Lifter, path: str, n: fx.Node) -> L:
    from nnspec.importer.patterns import relabel

    mod = lifter.modules[path]
    region = _region(lifter, path, n)
    first = _first(lifter, path)
    outer = {p: k for p, k in lifter.calls(n).items() if p != path}
    if outer != {p: k for p, k in lifter.calls(first).items() if p != path}:
        raise lifter.fail(n, f"module {path} called again from another call of its parent (a block applied "
                             "repeatedly with shared weights), which the importer does not write")
    if type(mod) is not nn.Linear:
        raise lifter.fail(n, f"module {type(mod).__name__} called more than once; only a Linear's weights are read "
                             "again by name")
    ins, first_region = _inputs(lifter, region), _region(lifter, path, first)
    first_ins = _inputs(lifter, first_region)
    if len(ins) != 1 or len(first_ins) != 1:
        raise lifter.fail(n, "a Linear taking several tensors")
    # the first call, bound where it stands, so that its parameters exist before this call reads them
    first_out = next(m for m in reversed(first_region) if any(u not in first_region for u in m.users))
    first_l = lifter.lift(first_out)
    if isinstance(first_l, L):
        first_l.bind = True
    x1 = _merge_last(lifter, lifter.lift(first_ins[0]), n)
    x = _merge_last(lifter, lifter.lift(ins[0]), n)
    xv, yv = lifter.value(ins[0]), lifter.value(n)
    _check(lifter, n, F.linear(xv, mod.weight, mod.bias), yv)
    in_axis, scope, idx = x1.axes[-1][0], lifter.scope_of(n), lifter.index[n]
    if x.axes[-1][0] != in_axis:
        x = relabel(lifter, x, x.axes[-1][0], in_axis, scope, idx - 0.1)
    out = lifter.dims.axis(mod.weight.shape[0])
    axes = x.axes[:-1] + [(out,)]
    names = [a for g in axes for a in g]
    if len(set(names)) != len(names) or "*" in in_axis:
        raise lifter.fail(n, "a Linear called again whose output axis repeats an input's name")
    attr = path.rpartition(".")[2]
    bias = f" + {attr}.bias" if mod.bias is not None else ""
    node = L(f"{{0}} * {attr}.weight{bias}", [x], axes, names, scope, idx, atom=False, hint=attr, bind=True)
    node.annot = ", ".join(names)
    return node
