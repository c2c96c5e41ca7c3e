"""Fusion groups: shared machinery for the passes that form them (`fuse-add-norm`, `fuse-epilogue`,
`fuse-elementwise`).

A group is an annotation (`node.meta["fusion_group"]` and a `FusionGroup` record in
`graph.meta["fusion_groups"]`); what the graph computes does not change. Forming one keeps two promises to
the backends: the group is convex (no path leaves it and comes back, so it can run as one kernel), and its
members stand together in the node order. The order is changed only by moving group members, never the
relative order of inputs, parameters, buffers and block calls (the state dict's order); a group that would
need that is refused.
"""

from __future__ import annotations

import heapq

from nnspec.compiler.ir import FusionGroup, Graph
from nnspec.compiler.ops import OPS
from nnspec.compiler.ops.registry import Effect
from nnspec.compiler.passes.base import Context, Refusal, same_axes

# nodes whose relative order a group never changes: leaves (the signature and the state dict's order), block
# calls (they own parameters) and stateful ops (their updates happen in order)
PINNED = (Effect.LEAF, Effect.OWNS_STATE, Effect.STATEFUL)


def table(graph: Graph) -> dict[str, FusionGroup]:
    return graph.meta.setdefault("fusion_groups", {})


def group_of(graph: Graph, name: str) -> str | None:
    return graph[name].meta.get("fusion_group")


def boundary(graph: Graph, members: list[str]) -> tuple[list[str], list[str]]:
    """(values read from outside, members used outside or returned), in graph order."""
    inside = set(members)
    order = {n: i for i, n in enumerate(graph.nodes)}
    ins = {i for m in members for i in graph[m].inputs if i not in inside}
    outs = {m for m in members if m in graph.outputs or any(u.name not in inside for u in graph.users(m))}
    return sorted(ins, key=order.__getitem__), sorted(outs, key=order.__getitem__)


def convex(graph: Graph, members: set[str]) -> bool:
    """No path from a member through a non-member back into a member."""
    todo = [u.name for m in members for u in graph.users(m) if u.name not in members]
    seen: set[str] = set()
    while todo:
        n = todo.pop()
        if n in members:
            return False
        if n not in seen:
            seen.add(n)
            todo.extend(u.name for u in graph.users(n))
    return True


def schedule(graph: Graph) -> list[str] | None:
    """A topological order with every group contiguous, as close to the current order as possible (ready
    units in their first member's position); None when that would reorder inputs, parameters, buffers or
    calls."""
    pos = {n: i for i, n in enumerate(graph.nodes)}
    unit = {n: graph[n].meta.get("fusion_group") or n for n in graph.nodes}
    members: dict[str, list[str]] = {}
    for n in graph.nodes:
        members.setdefault(unit[n], []).append(n)
    deps = {u: {unit[i] for m in ms for i in graph[m].inputs} - {u} for u, ms in members.items()}
    users: dict[str, set[str]] = {u: set() for u in members}
    for u, ds in deps.items():
        for d in ds:
            users[d].add(u)
    waiting = {u: len(ds) for u, ds in deps.items()}
    ready = [(pos[ms[0]], u) for u, ms in members.items() if not waiting[u]]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, u = heapq.heappop(ready)
        order.extend(members[u])
        for w in users[u]:
            waiting[w] -= 1
            if not waiting[w]:
                heapq.heappush(ready, (pos[members[w][0]], w))
    if len(order) != len(pos):
        return None
    fixed = [n for n in graph.nodes if OPS[graph[n].op].effect in PINNED]
    return order if [n for n in order if OPS[graph[n].op].effect in PINNED] == fixed else None


def form(ctx: Context, graph: Graph, pass_name: str, kind: str, members: list[str], why: str) -> FusionGroup:
    """Make `members` a group of `kind` (raises Refusal, leaving the graph as it was, when it cannot be)."""
    if len(set(members)) < 2:
        raise Refusal("a group needs two or more ops")
    taken = [m for m in members if group_of(graph, m)]
    if taken:
        raise Refusal(f"{taken[0]} is already in group {group_of(graph, taken[0])}")
    if not convex(graph, set(members)):
        raise Refusal("a path leaves the group and comes back into it")
    groups = table(graph)
    n = sum(1 for g in groups.values() if g.kind == kind)
    name = f"{kind}_{n}"
    while name in groups:
        n += 1
        name = f"{kind}_{n}"
    for m in members:
        graph[m].meta["fusion_group"] = name
    order = schedule(graph)
    if order is None:
        for m in members:
            del graph[m].meta["fusion_group"]
        raise Refusal("making it contiguous would reorder parameters or block calls")
    graph.reorder(order)
    inside = [x for x in graph.nodes if x in set(members)]
    ins, outs = boundary(graph, inside)
    group = FusionGroup(name, kind, inside, ins, outs)
    groups[name] = group
    ctx.explain.group(pass_name, graph, graph[inside[0]], f"{name} ({kind}): {', '.join(inside)}; {why}; reads "
                      f"{', '.join(ins)}; writes {', '.join(outs)}")
    return group


def refresh(graph: Graph) -> None:
    """Bring group records up to date after later rewrites: drop members that are gone, groups left with one,
    and recompute each group's boundary."""
    groups = graph.meta.get("fusion_groups")
    if not groups:
        return
    for name in list(groups):
        g = groups[name]
        g.nodes = [m for m in graph.nodes if graph[m].meta.get("fusion_group") == name]
        if len(g.nodes) < 2 or not convex(graph, set(g.nodes)):
            for m in g.nodes:
                del graph[m].meta["fusion_group"]
            del groups[name]
            continue
        g.inputs, g.outputs = boundary(graph, g.nodes)


same_domain = same_axes   # an elementwise kernel's domain: the same axes, in any order
