"""Parameters that no output reads: kept in the spec as `param(sizes, name=...)` statements nothing reads.

A model may hold a parameter its outputs never read (a source spec's dead statement, a head left unused). Export
drops the computation reading it but keeps the parameter as an input, so the importer sees only its key and shape.
The spec must hold it all the same, or the parameter count differs and the state dict does not load: each one is
written `proj_weight = param(out, in, name=proj_weight)` in the innermost block that is written anyway (its own
module's, or an ancestor's; the body when none is), named by its key's path below that block, dots as `_`. A
statement nothing reads computes nothing, so the outputs are unchanged; in a module list's layers it is the same
statement in each layer, so the layers still render alike and still form a `repeat`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nnspec.importer.graph import L
from nnspec.importer.lift import ancestors, instance_of

if TYPE_CHECKING:
    from nnspec.importer.capture import Captured
    from nnspec.importer.lift import Lifter
    from nnspec.importer.render import Renderer


def dead_parameters(cap: Captured, lifter: Lifter) -> list[str]:
    """State-dict keys of the parameters no output reads (a tied weight read through either name is live; one
    read through neither is one parameter, under its first name), whether export kept them as inputs or not."""
    live = ancestors(next(n for n in cap.program.graph.nodes if n.op == "output"))
    tensors = dict(cap.model.named_parameters(remove_duplicate=False))
    live_keys = {key for n in live if n.op == "placeholder" and (key := lifter.params.get(n.name)) is not None}
    live_ids = {id(tensors[k]) for k in live_keys if k in tensors}
    return [key for key, t in cap.model.named_parameters() if key not in live_keys and id(t) not in live_ids]


def write_dead(lifter: Lifter, renderer: Renderer, keys: list[str]) -> dict[str, tuple[str, str]]:
    """Add a `param` statement for each dead key to the renderer's nodes (in every call of its block); return
    key -> (its block's module path, the statement's name): the mapping's spec path is the block's path and the
    name (`layers.{i}.res_weight`), its checkpoint key the block's pattern and the rest of the key as it is."""
    paths: dict[str, tuple[str, str]] = {}
    tensors = dict(lifter.cap.model.named_parameters(remove_duplicate=False))
    prefixes = sorted((p + "." for p in lifter.flattened if p), key=len, reverse=True)
    for key in keys:
        val = tensors[key]
        owner = _owner(key, renderer.scopes)
        rel = key[len(owner) + 1:] if owner else next((key[len(q):] for q in prefixes if key.startswith(q)), key)
        name = rel.replace(".", "_")
        ones = [i for i, s in enumerate(val.shape) if s == 1]
        if ones:
            lifter.squeezed[key] = ones               # the mapping squeezes them, as for a live `param`
        sizes = [lifter.dims.expr(int(s)) for s in val.shape if s != 1]
        axes = [(lifter.dims.axis(int(s)),) for s in val.shape if s != 1]
        names = [g[0] for g in axes]
        # two axes of one size: the language names the later `d_1`
        axes = [(f"{a}_{names[:i].count(a)}",) if a in names[:i] else (a,) for i, a in enumerate(names)]
        for scope in _instances(owner, renderer.scopes):
            idx = _last_idx(renderer, scope) + 0.001 * (len(paths) + 1)
            node = L(f"param({', '.join(sizes)}, name={name})", [], list(axes), [g[0] for g in axes], scope, idx,
                     hint=name, bind=True)
            renderer.nodes.append(node)
        paths[key] = (instance_of(owner), name)
    return paths


def _owner(key: str, scopes: set[str]) -> str:
    """The innermost written block (a scope the renderer writes) holding the parameter's module, "" the body."""
    parts = key.split(".")[:-1]
    clean = {instance_of(s) for s in scopes}
    for k in range(len(parts), 0, -1):
        path = ".".join(parts[:k])
        if path in clean:
            return path
    return ""


def _instances(owner: str, scopes: set[str]) -> list[str]:
    """Every call of the owner block (`block`, `block@1`, ... for a block applied with shared weights)."""
    if not owner:
        return [""]
    return sorted(s for s in scopes if instance_of(s) == owner) or [owner]


def _last_idx(renderer: Any, scope: str) -> float:
    idxs = [n.idx for n in renderer.nodes if renderer.within(n, scope)]
    return max(idxs) if idxs else 0.0
