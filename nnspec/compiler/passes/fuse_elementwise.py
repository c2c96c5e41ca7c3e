"""Elementwise fusion groups: chains of pointwise ops over one domain marked as one `elementwise` group.

Grown from the last op of a chain up through producers that are pointwise (the op table's `pointwise` trait;
not rotary, which reads across its feature axis), not yet grouped, over the same axes (a producer over fewer
axes would be recomputed per broadcast element: refused) and read only inside the group (otherwise its value
must be written anyway: refused), keeping the group convex. The kernel reads the group's inputs once and
writes its outputs once; intermediates stay in registers. Sound because a group is only an annotation: the
nodes and what they compute are unchanged (see `groups`).
"""

from __future__ import annotations

from dataclasses import dataclass

from nnspec.compiler.ir import Graph, TensorType
from nnspec.compiler.ops import OPS
from nnspec.compiler.passes.base import Context, Refusal, users_text
from nnspec.compiler.passes.groups import convex, form, group_of, same_domain


@dataclass(frozen=True)
class FuseElementwise:
    name: str = "fuse-elementwise"

    def apply(self, ctx: Context, graph: Graph) -> tuple[Graph, bool]:
        changed = False
        for seed in reversed(list(graph)):
            if not OPS[seed.op].has("pointwise") or group_of(graph, seed.name) or not isinstance(seed.type, TensorType):
                continue
            members = [seed.name]
            while (p := self._next(graph, members, seed.type)) is not None:  # type: ignore[arg-type]
                members.append(p)
            if len(members) < 2:
                for p, why in self._refusals(graph, members, seed.type):  # type: ignore[arg-type]
                    ctx.explain.refuse(self.name, graph, seed, f"{seed.name} not grouped with {p}: {why}")
                continue
            members.reverse()
            try:
                form(ctx, graph, self.name, "elementwise", members, f"{len(members)} pointwise ops over "
                     f"[{', '.join(seed.type.names)}]")
                changed = True
            except Refusal as why:
                ctx.explain.refuse(self.name, graph, seed, f"{', '.join(members)} not grouped: {why}")
                continue
            for p, why in self._refusals(graph, members, seed.type):  # type: ignore[arg-type]
                ctx.explain.refuse(self.name, graph, graph[p], f"group {group_of(graph, seed.name)} does not take "
                                   f"{p}: {why}")
        return graph, changed

    def _candidates(self, graph: Graph, members: list[str]) -> list[str]:
        out = []
        for m in members:
            for p in graph[m].inputs:
                if p not in members and p not in out and OPS[graph[p].op].has("pointwise") and not group_of(graph, p):
                    out.append(p)
        return out

    def _why_not(self, graph: Graph, members: list[str], p: str, domain: TensorType) -> str | None:
        outside = [u for u in graph.users(p) if u.name not in members]
        if outside or p in graph.outputs:
            return f"it is also used by {users_text(outside) or 'the block output'}"
        t = graph[p].type
        if not isinstance(t, TensorType) or not same_domain(t, domain):
            return f"it is over [{', '.join(t.names) if isinstance(t, TensorType) else '?'}], the group over " \
                   f"[{', '.join(domain.names)}]"
        if not convex(graph, {*members, p}):
            return "a path would leave the group and come back"
        return None

    def _next(self, graph: Graph, members: list[str], domain: TensorType) -> str | None:
        return next((p for p in self._candidates(graph, members) if self._why_not(graph, members, p, domain) is None),
                    None)

    def _refusals(self, graph: Graph, members: list[str], domain: TensorType) -> list[tuple[str, str]]:
        return [(p, why) for p in self._candidates(graph, members)
                if (why := self._why_not(graph, members, p, domain)) is not None]
