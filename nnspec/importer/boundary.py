"""A block's result as its caller sees it: the axis names a value keeps when it leaves the block computing it.

The language renames a block's result at the call (`Builder.in_caller_terms`): a name its signature bound stays
the caller's, a dim or free dim keeps its name, and a name the block made up becomes its size's name. The importer
makes names up when it relabels an axis so that two alike-named axes differ (the keys of a score contraction,
`S` for `T`): inside the block the scores are `[B, h, T, S]`, but if the relabelled axis survives to the block's
result (an einsum whose first operand was the keys, so that the queries became `S`), the caller sees it under the
name of the axis it renames (`T`). A consumer outside the block must use that name too (`max(h, over=T)`, not
`over=S`): the value it reads is the block's result seen through a view that renames it, written as nothing.
"""

from __future__ import annotations

from typing import Any

from torch import fx

from nnspec.importer.graph import L, annotation

# `lift.Lifter` (typed `Any`: `lift` imports this module)


def _inside(scope: str, block: str) -> bool:
    return scope == block or scope.startswith(block + ".")


def _signature_names(out: L) -> set[str]:
    """The axis names of the values flowing into the block computing `out` (on the way to it): names the block's
    signature binds to the caller's."""
    names: set[str] = set()
    seen: set[int] = set()
    stack = [out]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        for r in list(n.refs) + ([n.member[0]] if n.member else []):
            if _inside(r.scope, out.scope):
                stack.append(r)
            else:
                names.update(r.flat())
    return names


def _root(lifter: Any, name: str) -> str:
    seen = {name}
    while name in lifter.dims.aliases and lifter.dims.aliases[name] not in seen:
        name = lifter.dims.aliases[name]
        seen.add(name)
    return name


def _in_layout_order(lifter: Any, out: L) -> L:
    """`out` with its axes in torch's layout order: a block's result whose language order differs (`mean(x,
    over=T) + x` is `[B, d, T]`, torch's `[B, T, d]`) is bound as `h[B, T, d] = ...` in the block, so that a
    layer's result has its input's type (`repeat`) and readers outside need not know how it was computed."""
    flat = out.flat()
    if out.order == flat or sorted(out.order) != sorted(flat) or any(len(g) > 1 for g in out.axes) \
            or any("*" in a for a in flat):
        return out
    got = lifter.renamed.get((id(out), "@order"))
    if got is None:
        got = L("{0}", [out], out.axes, flat, out.scope, out.idx + 0.00005, hint=out.hint, bind=True)
        got.annot = ", ".join(flat)
        lifter.renamed[(id(out), "@order")] = got
    return got


def _free_axes_merged(lifter: Any, out: L, node: fx.Node) -> L:
    """`out` with each torch dim holding the pieces of a free axis (`(wt nt)`: a sequence split in two inside the
    block, merged back by a view that nothing writes) merged and named as that axis (`T`) in the block, so that
    the block returns what it takes: a layer of a `repeat` reads `[B, T, d]` whichever layer made it."""
    counts, fixed = lifter.__dict__.get("counts", {}), lifter.__dict__.get("fixed_counts", set())
    todo = [d for d, g in enumerate(out.axes) if len(g) > 1 and any(a in counts and a not in fixed for a in g)]
    if not todo:
        return out
    got = lifter.renamed.get((id(out), "@free"))
    if got is not None:
        return got
    shape = lifter.value(node).shape          # `out`'s torch dims, one group of names each
    rename = {d: lifter.dims.free.get(int(shape[d])) for d in todo}
    if any(v is None or v in out.flat() for v in rename.values()):
        return out                            # not a free axis's size (or its name is taken): left as it was
    # written as the merge (`x[B, (wt nt), d]`) relabelled at once (`[B, T, d]`), where the value is made
    items: list[str | tuple[str, ...]] = []
    for d, g in enumerate(out.axes):
        items.extend([g] if d in rename else g)
    axes = [(rename[d],) if d in rename else g for d, g in enumerate(out.axes)]
    flat = [a for g in axes for a in g]
    bound = out                               # made safe to annotate, as `ops._bound` does (not imported: a cycle)
    while bound.fmt == "{0}" and len(bound.refs) == 1 and bound.member is None:
        bound = bound.refs[0]
    if not bound.atom:
        bound.bind = True
    got = L("{0}" + annotation(items) + annotation(flat), [out], axes, flat, out.scope, out.idx + 0.00002,
            hint=out.hint)
    lifter.renamed[(id(out), "@free")] = got
    return got


def leaving(lifter: Any, out: Any, node: fx.Node, consumer: fx.Node | None) -> Any:
    """`out` (the lifted `node`) as read by `consumer` (None: the model's output) where the value leaves the block
    computing it: in torch's layout order, and renamed where it carries an axis the importer relabelled there;
    else `out` itself."""
    if not isinstance(out, L) or not out.scope or out.member is not None:
        return out
    where = lifter.scope_of(consumer) if consumer is not None else ""
    if _inside(where, out.scope):
        return out
    out = _in_layout_order(lifter, _free_axes_merged(lifter, out, node))
    keep = set(lifter.dims.values) | set(lifter.dims.free.values())
    made = [a for a in out.flat() if a in lifter.dims.aliases and a not in keep]
    if not made:
        return out
    bound = _signature_names(out)
    rename = {a: _root(lifter, a) for a in made if a not in bound}
    if not rename:
        return out
    key = (id(out), where)
    cached = lifter.renamed.get(key)
    if cached is not None:
        return cached
    axes = [tuple(rename.get(a, a) for a in g) for g in out.axes]
    flat = [a for g in axes for a in g]
    if len(set(flat)) != len(flat):
        raise lifter.fail(node, f"a block's result whose axes {', '.join(out.flat())} its caller would name alike")
    view = L("{0}", [out], axes, [rename.get(a, a) for a in out.order], where, out.idx + 0.0001, hint=out.hint)
    lifter.renamed[key] = view
    return view
