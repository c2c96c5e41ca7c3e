"""Marks that stand for several ops of the graph: what a reader sees as one step is drawn as one.

- A split fan: `q, k, v = split(qkv[B, T, (3 n_head head_dim)], over=3)` is a rearrange to `[B, T, 3, n_head,
  head_dim]` and one `select` per member. Drawn op by op, the 5-wire bundle is copied once per member; drawn as
  one fan, the bundle ends at one bar and each member leaves it as its own labelled bundle (q, k, v), so the wires
  drawn for the split grow with the members, not members x the bundle's width. Sound: the fused op's inputs are
  the rearrange's and its outputs the selects', in the selects' index order, and nothing else read the
  intermediate (`_fuse_splits` checks that every use of it is one of the selects).
- A mask: `where(mask, scores, -inf)` whose mask a source op makes (`causal_mask(T, S)`) is drawn as one mask box
  on the score wires of the axes it relates, with the mask's shape inside; a mask that arrives as a wire (the
  padding mask `visible`) enters the box as that wire. Sound: the source has no other use and no operands.
"""

from __future__ import annotations

from dataclasses import replace

from nnspec.compiler.diagrams.view import Flat, Op, shown_name
from nnspec.compiler.ops import OPS


def fuse(flat: Flat) -> Flat:
    _fuse_splits(flat)
    _fuse_masks(flat)
    return flat


def _renamed(flat: Flat, gone: list[str], now: str) -> None:
    """Regions (inlined repeats) list their ops by id: the fused op takes the place of the ops it stands for."""
    for region in flat.regions:
        if any(g in region.ops for g in gone):
            region.ops = list(dict.fromkeys(now if o in gone else o for o in region.ops))


def _users(flat: Flat) -> dict[str, list[int]]:
    users: dict[str, list[int]] = {v: [] for v in flat.values}
    for n, op in enumerate(flat.ops):
        for v in op.inputs:
            users[v].append(n)
    for _, v in flat.outputs:
        users[v].append(-1)
    return users


def _fuse_splits(flat: Flat) -> None:
    users = _users(flat)
    for vid in list(flat.values):
        idx = users.get(vid, [])
        if len(idx) < 2 or -1 in idx:
            continue
        selects = [flat.ops[n] for n in idx]
        if not all(op.op == "select" and op.inputs == [vid] and not op.params for op in selects):
            continue
        axis = {op.node.attrs["axis"] for op in selects}
        indices = [op.node.attrs["index"] for op in selects]
        if len(axis) != 1 or len(set(indices)) != len(indices):
            continue
        selects.sort(key=lambda op: op.node.attrs["index"])
        producer = next((op for op in flat.ops if vid in op.outputs), None)
        # a rearrange feeding only the selects is the split's own reshape: the fan starts at its input
        whole = (producer is not None and producer.op == "rearrange" and len(producer.outputs) == 1
                 and len(producer.inputs) == 1 and not producer.params)
        source = producer.inputs[0] if whole and producer is not None else vid
        first = min(idx)
        fan = Op(",".join(op.id for op in selects), selects[0].node, [source],     # `attn/q,attn/k,attn/v`
                 [v for op in selects for v in op.outputs], operands=[flat.values[source].type],
                 members=tuple(shown_name(op.node) for op in selects), split=next(iter(axis)))
        gone = {id(op) for op in selects} | ({id(producer)} if whole else set())
        _renamed(flat, [op.id for op in selects] + ([producer.id] if whole and producer is not None else []), fan.id)
        flat.ops[:] = ([op for n, op in enumerate(flat.ops) if id(op) not in gone and n < first] + [fan]
                       + [op for n, op in enumerate(flat.ops) if id(op) not in gone and n > first])
        if whole:
            del flat.values[vid]
        users = _users(flat)


def _is_mask(op: Op) -> bool:
    """`where(mask, scores, -inf)`: the scores where the mask holds, else minus infinity."""
    return (op.op == "where" and len(op.inputs) == 2 and len(op.consts) == 1
            and isinstance(op.consts[0].value, float) and op.consts[0].value == float("-inf"))


def _fuse_masks(flat: Flat) -> None:
    for op in list(flat.ops):
        if not _is_mask(op):
            continue
        users = _users(flat)
        mask, scores = op.inputs
        at = flat.ops.index(op)
        producer = next((p for p in flat.ops if mask in p.outputs), None)
        made_here = (producer is not None and not producer.inputs and not producer.params
                     and OPS[producer.op].family == "source" and users[mask] == [at] and len(producer.outputs) == 1)
        if not made_here:    # the mask is a wire (the padding mask): it enters the box
            flat.ops[at] = replace(op, mask=_mask_axes(flat, [mask], scores))
            continue
        assert producer is not None
        fused = replace(op, inputs=[scores], operands=[flat.values[scores].type, op.consts[0]],
                        mask=_mask_axes(flat, [mask], scores), mask_shape=producer.op)
        # a padding mask applied just before, to these scores only, is the same box with its wire entering
        inner = next((p for p in flat.ops if scores in p.outputs), None)
        if inner is not None and inner.mask and not inner.mask_shape and users[scores] == [at]:
            wire, first = inner.inputs
            fused = replace(fused, inputs=[wire, first], operands=[flat.values[wire].type,
                                                                   flat.values[first].type, op.consts[0]],
                            mask=_mask_axes(flat, [mask], first))
            flat.ops.remove(inner)
            del flat.values[scores]
            _renamed(flat, [inner.id], op.id)
        flat.ops[flat.ops.index(op)] = fused
        flat.ops.remove(producer)
        del flat.values[mask]
        _renamed(flat, [producer.id], op.id)


def _mask_axes(flat: Flat, masks: list[str], scores: str) -> tuple[str, ...]:
    """The axes a mask relates: the masks' axes that the scores also carry, in the scores' order."""
    names = {n for m in masks for n in flat.values[m].type.names}
    return tuple(a for a in flat.values[scores].type.names if a in names)
