"""An unrolled recurrence as the language's `scan`: `torch.stack([block(state, x[:, i], ...)[1] for i ...], d)`.

Export unrolls a Python loop over a sequence that calls one block per step: the calls of block P are the scopes
`P, P@1, ..., P@(n-1)` (`Lifter.calls`), each reading the state the previous call returned and the i-th entries
`select(X, d, i)` of the same sequences, and the per-step outputs are stacked along d. That is
`final, ys = scan(P, init, X1, X2, ..., over=AX, name=P)` when every call runs the same ops (compared node by
node, arguments included), hands on exactly one state, reads the sequences in the same order, and the stack puts
the sequence axis back where the first sequence had it (the language's rule). The block is written once, from
the first call; the scan's value is its members (final state, stacked outputs). Anything else is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from nnspec.importer.graph import L
from nnspec.importer.leaves import _inputs
from nnspec.importer.lift import ancestors

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter


def _region(lifter: Lifter, scope: str) -> list[fx.Node]:
    return [m for m in lifter.graph.nodes if scope in lifter.stack(m)]


def _shape_of(region: list[fx.Node]) -> list[tuple[str, tuple[Any, ...]]]:
    """The ops of one call, with their non-tensor arguments: equal for calls that compute alike."""
    return [(str(m.target), tuple(a for a in m.args if not isinstance(a, (fx.Node, list, tuple)))) for m in region]


def _zeros_as_used(lifter: Lifter, carry: fx.Node, region: list[fx.Node]) -> L | None:
    """An all-zero initial state whose sizes name two axes alike (RetNet's `[B, heads, dk, dv]` with dk = dv),
    named by provenance instead: after the axes of the value the step first combines it with elementwise (`0.9 * s
    + k v^T`: the outer product's axes, each from its own projection), which torch aligns with it by position.
    None when there is no such value (then the state is refused as before)."""
    from nnspec.importer.ops import _scope_idx

    v = lifter.value(carry)
    if not isinstance(v, torch.Tensor) or not v.is_floating_point() or bool(v.any()) or carry not in lifter.static:
        return None
    front = {carry}
    for m in region:
        ins = [lifter.resolve(a) for a in m.all_input_nodes]
        if not any(a in front for a in ins):
            continue
        others = [a for a in ins if a not in front]
        if not others:                               # a scalar op on the state (`0.9 * s`): still the state
            front.add(m)
            continue
        if str(m.target) not in ("aten.add.Tensor", "aten.sub.Tensor", "aten.mul.Tensor") or len(others) != 1 \
                or lifter.value(others[0]).shape != v.shape or _reads(others[0], front):
            return None
        other = lifter.lift(others[0])
        names = [g[0] for g in other.axes if len(g) == 1] if isinstance(other, L) else []
        if len(names) != v.dim() or len(set(names)) != len(names):
            return None
        scope, idx = _scope_idx(lifter, carry)
        return L(f"zeros({', '.join(names)})", [], [(a,) for a in names], names, scope, idx, hint="zeros")
    return None


def _reads(n: fx.Node, front: set[fx.Node]) -> bool:
    """Whether `n` depends on any node of `front`."""
    seen, todo = set(), [n]
    while todo:
        m = todo.pop()
        if m in front:
            return True
        if m not in seen:
            seen.add(m)
            todo.extend(m.all_input_nodes)
    return False


class InlineStep(torch.nn.Module):
    """The step of a recurrence written inline (a Python loop in a module's forward, no step module): a module
    without weights that no model holds, standing for the loop body so that its unrolled steps are calls `P.step`,
    `P.step@1`, ... of one block, which `lift_stack` writes as a `scan` like a generated step's."""


def inline_steps(lifter: Lifter, n: fx.Node, outs: list[fx.Node]) -> bool:
    """Tag the unrolled steps of an inline loop as calls of one step block (`P.step`, `P.step@1`, ...); False when
    `outs` are not such steps. Step i is what its output needs that reads the step's entries `select(X, d, i)` of
    sequences computed before the loop (Hugging Face Mamba's `ssm_state = dA[:, :, i] * ssm_state + dBu[:, :, i]`,
    `y_i = ssm_state @ C[:, i, :, None]`): the state it hands on is among it, read by the next step."""
    scope = lifter.scope_of(outs[0])
    step = f"{scope}.step" if scope else "step"
    if len(outs) < 2 or any(lifter.scope_of(o) != scope for o in outs) or step in lifter.modules:
        return False
    regions: list[set[fx.Node]] = []
    done: set[fx.Node] = set()
    for i, out in enumerate(outs):
        need = ancestors(out) - done
        cand = {m for m in need if str(m.target) == "aten.select.int" and m.args[2] == i
                and isinstance(m.args[0], fx.Node) and m.args[0] not in done}
        picks = {m for m in cand if not ancestors(m.args[0]) & cand}     # `y[:, :, 0]` of a step's value is not one
        if not picks:
            return False
        region: set[fx.Node] = set()            # what reads a pick, in graph order: one pass
        for m in sorted(need, key=lifter.index.__getitem__):
            if m not in picks and any(a in picks or a in region for a in m.all_input_nodes):
                region.add(m)
        if out not in region or any(lifter.scope_of(m) != scope for m in region):
            return False
        regions.append(region)
        done |= region | picks
    key = next(reversed(outs[0].meta.get("nn_module_stack") or {}), "")
    lifter.modules[step] = InlineStep()
    for i, region in enumerate(regions):
        for m in region:
            stack = dict(m.meta.get("nn_module_stack") or {})
            stack[f"{key}_step" + (f"@{i}" if i else "")] = (step, InlineStep)
            m.meta["nn_module_stack"] = stack
            lifter._calls.pop(m, None)
    return True


def lift_stack(lifter: Lifter, n: fx.Node) -> Any:
    from nnspec.importer.indexing import _zeros
    from nnspec.importer.ops import _dim

    outs = [lifter.resolve(o) for o in n.args[0]]
    scopes = [lifter.scope_of(o) for o in outs]
    if len(set(scopes)) == 1 and inline_steps(lifter, n, outs):
        scopes = [lifter.scope_of(o) for o in outs]        # the steps of a loop written inline: `P.step@i`
    base = scopes[0]
    if not base or scopes != [base] + [f"{base}@{i}" for i in range(1, len(outs))]:
        raise lifter.fail(n, "a stack of values that are not the per-step outputs of one block's calls (a scan)")
    regions = [_region(lifter, s) for s in scopes]
    if any(_shape_of(r) != _shape_of(regions[0]) for r in regions[1:]):
        raise lifter.fail(n, f"the calls of block {base} differ, which `scan` cannot write")
    seqs: list[tuple[fx.Node, int]] | None = None
    carries: list[fx.Node] = []
    for i, region in enumerate(regions):
        ins = _inputs(lifter, region)
        # in graph order, which is the order of the step block's parameters (`Renderer.ins` sorts by position),
        # not the order the step first reads them in
        picks = sorted((m for m in ins if str(m.target) == "aten.select.int" and m.args[2] == i),
                       key=lifter.index.__getitem__)
        state = [m for m in ins if m not in picks]
        here = [(lifter.resolve(m.args[0]), m.args[1]) for m in picks]
        if seqs is None:
            seqs = here
        if len(state) != 1 or here != seqs or not seqs:
            raise lifter.fail(n, f"call {i} of block {base} does not read one state and the step's entries of the "
                                 "same sequences")
        if i and state[0] not in regions[i - 1]:
            raise lifter.fail(n, f"call {i} of block {base} does not read the state the previous call returned")
        carries.append(state[0])
    last_state = next((m for m in regions[-1] if any(u not in regions[-1] for u in m.users) and m is not outs[-1]),
                      None)
    x0 = lifter.lift(seqs[0][0])
    d = _dim(x0, seqs[0][1])
    rank = lifter.value(n).dim()
    if (n.args[1] if len(n.args) > 1 else 0) % rank != d or len(x0.axes[d]) != 1:
        raise lifter.fail(n, "a scan whose outputs are stacked elsewhere than its first sequence's axis")
    ax = x0.axes[d][0]
    init = _zeros(lifter, carries[0])
    if init is None:
        init = _zeros_as_used(lifter, carries[0], regions[0])
    if init is None:
        init = lifter.lift(carries[0])
    if not isinstance(init, L):
        raise lifter.fail(n, f"block {base}'s initial state is not zeros over distinctly named axes")
    lifter.cache[lifter.resolve(carries[0])] = init
    # the first call's values computed from the initial state are constants of the trace, not of the step
    reached = {carries[0], lifter.resolve(carries[0])}
    for m in regions[0]:
        if any(a in reached for a in m.all_input_nodes):
            reached.add(m)
            lifter.static.discard(m)
    xs = [lifter.lift(x) for x, _ in seqs]
    state_out, y0 = lifter.lift(carries[1]) if len(carries) > 1 else None, lifter.lift(outs[0])
    if state_out is None or not isinstance(y0, L) or state_out.idx >= y0.idx:
        raise lifter.fail(n, f"block {base} does not return its state before its output")
    scope, idx = lifter.scope_of(n), lifter.index[n]
    name = base.rpartition(".")[2]
    args = ", ".join(f"{{{j}}}" for j in range(1 + len(xs)))
    tup = L(f"scan(<<block:{base}>>, {args}, over={ax}, name={name})", [init, *xs, state_out, y0], [], [], scope, idx,
            bind=True, hint="ys")
    tup.names = ["final", "ys"]
    tup.scan_body = base
    lifter.scan_bodies.add(base)
    final = L("{0}", [tup], state_out.axes, state_out.order, scope, idx, member=(tup, 0))
    ys = L("{0}", [tup], y0.axes[:d] + [(ax,)] + y0.axes[d:], y0.order[:d] + [ax] + y0.order[d:], scope, idx,
           member=(tup, 1))
    if last_state is not None:
        lifter.cache[last_state] = final
    return ys


HANDLERS = {"aten.stack.default": lift_stack}
