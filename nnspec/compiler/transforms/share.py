"""share: tie weights across the depth of a repeat (recursive depth, SReT-style weight sharing).

`share(model, [("h", 4)])` turns the 12 separately weighted iterations of repeat `h` into 4 groups of 3
*consecutive* iterations (0-2, 3-5, 6-8, 9-11, as SReT shares within neighbouring blocks); each group has
one set of weights, under `h.0` ... `h.3`. The repeat gets `groups=4`; nothing is unrolled.

Contract: the parameter count drops to groups/count of the repeat's; each shared weight is one parameter
used count/groups times, so its gradient is the sum over its uses and one optimizer step updates it once.
`convert_params` starts each group from the weights of its first iteration. The groups must divide the
count; a repeat already shared, or one whose iterations in a group run different blocks (after --drop), is
refused.
"""

from __future__ import annotations

from nnspec.compiler.ir import Graph, Model
from nnspec.compiler.transforms.rewrite import TransformError, mark, specialize, unknown_path


def parse_share(text: str) -> tuple[str, int]:
    path, sep, groups = text.rpartition(":")
    if not sep or not path or not groups.isdigit() or int(groups) < 1:
        raise TransformError(f"--share takes REPEAT:GROUPS (e.g. h:4), got {text!r}")
    return path, int(groups)


def share(model: Model, specs: list[tuple[str, int]] | tuple[tuple[str, int], ...]) -> Model:
    """`model` with each named repeat's weights tied in `groups` groups of consecutive iterations."""
    wanted = dict(specs)
    found: set[str] = set()

    def decide(graph: Graph, prefix: str) -> tuple[tuple[str, int], ...] | None:
        out = []
        for node in graph:
            path = prefix + node.attrs["scope"] if node.op == "repeat" else None
            if path not in wanted:
                continue
            groups, count, a = wanted[path], node.attrs["count"], node.attrs
            if a["shared"] or "groups" in a:
                raise TransformError(f"--share {path}:{groups}: repeat {path} already shares its weights")
            if count % groups:
                raise TransformError(f"--share {path}:{groups}: {groups} groups do not divide the {count} "
                                     f"iterations of {path} (groups are consecutive and equal)")
            per = count // groups
            blocks = [dict(a.get("variants", ())).get(i, a["block"]) for i in range(count)]
            if any(len(set(blocks[g * per:(g + 1) * per])) > 1 for g in range(groups)):
                raise TransformError(f"--share {path}:{groups}: iterations of one group run different blocks "
                                     "(after --drop, or by repeat(..., index=i)); sharing weights between "
                                     "different blocks is not supported")
            found.add(path)
            out.append((node.name, groups))
        return tuple(out) or None

    def edit(graph: Graph, decision: tuple[tuple[str, int], ...]) -> None:
        for name, groups in decision:
            node = graph[name]
            node.attrs["groups"] = groups
            count = node.attrs["count"]
            mark(node.meta, f"share {groups} groups of {count // groups}")

    out = specialize(model, decide, edit, "shared")
    missing = [p for p in wanted if p not in found]
    if missing:
        raise unknown_path("--share", missing[0], model, "repeat")
    out.transforms.append("share " + " ".join(f"{p}:{g}" for p, g in wanted.items()))
    out.weight_maps = {}   # group g's weights no longer correspond to a checkpoint's layer g
    return out
