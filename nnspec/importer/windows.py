"""Reshapes that cut a grid into windows, and torch broadcasts that align axes by position.

**Windows.** `x.reshape(B, H // wh, wh, W // ww, ww, C)` splits two axes in one view (Swin's window partition),
and a free axis (`H`, sized by the input) splits into a count that follows it and a window of configured size.
The generic rule (`ops._reshape`) names one split's pieces by their sizes; here every split of the view is taken
from its provenance, which input dim's named axis each target dim holds:
- a free axis `H` split in two is `(nh wh)`: the count is a new name `n` + the axis (`nh`, its size inferred by
  the language's division), the window a dim named after the configured size it has (`window: 4` gives
  `wh: window` for rows and `ww: window` for columns, declared among the dims so that one tensor's two window
  axes, both of size `window`, have names of their own);
- any other axis is split as the generic rule does (`(num_heads head_dim)`), avoiding the names the value already
  has (a `heads` piece of a channel axis is never also a window).
The pieces are written as one annotation (`x[B, (nh wh), (nw ww), C]`); the rest of the view only regroups named
axes, which nothing writes. Target dims that cut across two source axes are refused (`ops._reshape`'s error).

**Positional alignment.** Torch adds `s[B, nh, nw, heads, N, M] + bias[heads, 16, 16]` by position: the bias's
dims take the names of the dims they align with. Where the names differ, the operand with fewer named axes (the
bias, a mask) is relabelled to the other's names, `bias[heads, (wh ww), (S ww_k)]`, which is exactly torch's
alignment, so it is sound whenever the annotation is a pure relabel (not read as a rearrange of the same names).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx

from nnspec.importer.errors import ImportFailure
from nnspec.importer.graph import L, annotation

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter


def _plan(atoms: list[tuple[str, int]], tgt: list[int]) -> list[tuple[str, Any]] | None:
    """Per target dim: ("one", ()) for size 1, ("group", names) for whole source axes merged, ("piece", (name, k))
    for the k-th piece of a split source axis; None when a target dim cuts across source axes."""
    out: list[tuple[str, Any]] = []
    i = j = 0
    while j < len(tgt):
        t = tgt[j]
        if t == 1:
            out.append(("one", ()))
            j += 1
            continue
        if i >= len(atoms):
            return None
        name, size = atoms[i]
        if size <= t:
            group, prod = [], 1
            while i < len(atoms) and prod < t and t % (prod * atoms[i][1]) == 0:
                group.append(atoms[i][0])
                prod *= atoms[i][1]
                i += 1
            if prod != t:
                return None
            out.append(("group", tuple(group)))
            j += 1
            continue
        prod, k = 1, 0                     # the axis splits over target dims tgt[j], tgt[j+1], ...
        while j < len(tgt) and prod < size:
            if tgt[j] != 1:
                if size % (prod * tgt[j]):
                    return None
                prod *= tgt[j]
                out.append(("piece", (name, k)))
                k += 1
            else:
                out.append(("one", ()))
            j += 1
        if prod != size:
            return None
        i += 1
    return out if i == len(atoms) else None


def reshape(lifter: Lifter, n: fx.Node) -> L:
    from nnspec.importer import ops

    x = lifter.lift(n.args[0])
    tgt = [int(s) for s in lifter.value(n).shape]
    if not isinstance(x, L):
        return ops._reshape(lifter, n)
    try:
        sizes = {a: ops._size_of_name(lifter, a, n) for a in x.flat()}
    except ImportFailure:                       # an axis of unknown size: the generic rule refuses it
        return ops._reshape(lifter, n)
    plan = _plan([(a, sizes[a]) for a in x.flat()], tgt)
    grouped = [d for d, g in enumerate(x.axes) if len(g) > 1]
    if plan is None and grouped:
        # a view cutting across the pieces a dim holds (a grid that windows split `(nh wh)`, cut again 2 x 2 by
        # patch merging): the dim's pieces merged first, then split as the view says
        merged = ops.merge_groups(lifter, x, grouped, n)
        sizes = {a: ops._size_of_name(lifter, a, n) for a in merged.flat()}
        plan = _plan([(a, sizes[a]) for a in merged.flat()], tgt)
        if plan is not None:
            x = merged
    split = sorted({p[1][0] for p in plan or [] if p[0] == "piece"})
    if plan is None or not split:
        return ops._reshape(lifter, n)         # merges only, or cutting across axes: the generic rule (or refusal)
    parts: dict[str, list[int]] = {a: [] for a in split}
    at: dict[str, list[int]] = {a: [] for a in split}
    for pos, (kind, what) in enumerate(plan):
        if kind == "piece":
            parts[what[0]].append(tgt[pos])
            at[what[0]].append(pos)
    taken = set(x.flat()) - set(split)
    if len(split) == 1 and not _free(lifter, split[0]) and not _clash(lifter, split[0], sizes, parts, taken) \
            and _grid_letter(lifter, x, split[0], split, parts[split[0]]) is None:
        return ops._reshape(lifter, n)         # one split of a configured axis, named apart: the generic rule
    pieces: dict[str, list[str]] = {}
    for a in split:
        pieces[a] = _names(lifter, n, a, sizes[a], parts[a], taken, _grid_letter(lifter, x, a, split, parts[a]),
                           _fixed_first(lifter, n, a, at[a]))
        taken.update(pieces[a])
    items: list[str | tuple[str, ...]] = [tuple(pieces[a]) if a in pieces else a for a in x.order]
    axes = [tuple(p for a in g for p in pieces.get(a, [a])) for g in x.axes]
    order = [p for a in x.order for p in pieces.get(a, [a])]
    scope, idx = lifter.scope_of(n), lifter.index[n]
    fmt = "{0}" + annotation(items)
    if any(_grid_letter(lifter, x, a, split, parts[a]) for a in split):
        fmt += annotation(list(order))      # a fixed grid's pieces as axes of their own, not kept merged (`nw*ww`)
    # a block's parameter split is named as the parameter (`x`), not as the value a call passes (which differs
    # between a repeat's first layer and the next, so that the layers would render differently)
    y = L(fmt, [ops._bound(x)], axes, order, scope, idx, hint=x.hint if x.scope == scope else "x")
    return ops._regroup(lifter, n, ops._Reshaped(y, tgt))


def _clash(lifter: Lifter, axis: str, sizes: dict[str, int], parts: dict[str, list[int]], taken: set[str]) -> bool:
    """Whether the generic names of `axis`'s pieces repeat a name the value has (a grid's second axis split as its
    first was: `(h1 patch_size)` twice)."""
    try:
        return bool(set(lifter.dims.split(axis, sizes[axis], parts[axis])) & taken)
    except ValueError:
        return True


def _free(lifter: Lifter, name: str) -> bool:
    """An axis sized by the example inputs (a free dim, or a count made from one): not a configured size."""
    return name in lifter.dims.free.values() or (name in getattr(lifter, "counts", {})
                                                  and name not in getattr(lifter, "fixed_counts", set()))


def _grid_letter(lifter: Lifter, x: L, axis: str, split: list[str], parts: list[int]) -> str | None:
    """`h` or `w` when configured axis `axis` is a grid's rows or columns cut into windows, else None: two axes
    split in one view (a 2 x 2 patch merging), or an axis other than the last (channels-last) split into a count
    and a window of a dim spelled `window`, one view per axis (Swin's partition as nnspec generates it). Rows are
    the first so cut, columns the second."""
    if len(parts) != 2 or _free(lifter, axis) or x.flat()[-1] == axis:
        return None
    if len(split) == 2:
        return "hw"[x.flat().index(axis) > x.flat().index(next(a for a in split if a != axis))]
    dims = lifter.dims
    if not any("window" in k and v == parts[1] for k, v in dims.values.items()):
        return None
    rows = [a for a in x.flat() if a != axis and a in getattr(lifter, "fixed_counts", set()) and a.startswith("nh")]
    return "w" if rows else "h"


def _fixed_first(lifter: Lifter, n: fx.Node, axis: str, at: list[int]) -> bool:
    """Whether free axis `axis`, split in two at target dims `at`, has its fixed piece first (`(2 c1)`: two
    halves of the sequence), as the model wrote the view; sizes alone cannot tell (`L = 4` splits 2 x 2)."""
    from nnspec.importer.provenance import fixed_sizes

    if len(at) != 2 or not _free(lifter, axis):
        return False
    flags = fixed_sizes(lifter, n)
    return flags is not None and len(flags) > max(at) and flags[at[0]] and not flags[at[1]]


def _names(lifter: Lifter, n: fx.Node, axis: str, size: int, parts: list[int], taken: set[str],
           grid: str | None = None, fixed_first: bool = False) -> list[str]:
    """Names for the pieces of `axis`; `grid` (`h` or `w`) when it is a configured grid axis cut into windows with
    the other (Swin's partition of a fixed grid): a count and a window as for a free axis, named by the letter.
    A free axis whose fixed piece comes first (`fixed_first`) is `(wt nt)`: the fixed size, then the count."""
    dims = lifter.dims
    if _free(lifter, axis) and len(parts) == 2 and fixed_first:
        window = _window(lifter, axis, parts[0], taken)
        return [window, _count(lifter, axis, parts[1])]
    if _free(lifter, axis) and len(parts) == 2:
        return [_count(lifter, axis, parts[0]), _window(lifter, axis, parts[1], taken)]
    if grid is not None and len(parts) == 2 and parts[1] > 1:
        window = _window(lifter, grid.upper(), parts[1], taken)
        return [_grid_count(lifter, grid, parts[0], size, window), window]
    try:
        names = dims.split(axis, size, parts)
    except ValueError:
        raise lifter.fail(n, f"a reshape splitting axis {axis} into pieces {parts} it cannot name apart") from None
    out = []
    for name, p in zip(names, parts, strict=True):
        if name in taken or name in out:
            alt = next((k for k in dims.ordered() if dims.values[k] == p and k not in taken and k not in out), None)
            if alt is None:
                raise lifter.fail(n, f"a reshape whose piece of {axis} would repeat the name {name}")
            name = alt
        out.append(name)
    return out


def _grid_count(lifter: Lifter, letter: str, size: int, grid: int, window: str) -> str:
    """How many windows fit along a configured grid's rows (`h`) or columns (`w`): a dim (`nh: h0 / wh`), since a
    count the language infers inside a block is named by its size outside it; one per (letter, size), so that the
    calls of a block name it alike."""
    dims = lifter.dims
    made: dict[tuple[str, int], str] = lifter.__dict__.setdefault("grid_counts", {})
    if (letter, size) not in made:
        name, k = f"n{letter}", 0
        while name in dims.values or name in dims.free.values() or name in dims.local:
            k += 1
            name = f"n{letter}_{k}"
        whole = sorted((d for d in dims.ordered() if dims.values[d] == grid and d not in dims.derived
                        and "layer" not in d), key=lambda d: not d.startswith(letter))
        dims.values[name] = size
        dims.placed.add(name)
        dims.derived[name] = f"{whole[0]} / {window}" if whole else str(size)
        dims.used.update([name, *whole[:1]])
        lifter.__dict__.setdefault("fixed_counts", set()).add(name)
        made[(letter, size)] = name
    return made[(letter, size)]


def _count(lifter: Lifter, axis: str, size: int) -> str:
    """`nh`: how many windows fit along free axis `H` (a new name per size, inferred where it is written)."""
    counts: dict[str, int] = lifter.__dict__.setdefault("counts", {})
    base = "n" + axis.lower()
    name, k = base, 0
    while (name in counts and counts[name] != size) or name in lifter.dims.values \
            or name in lifter.dims.free.values():
        k += 1
        name = f"{base}_{k}"
    counts[name] = size
    lifter.dims.local[name] = size
    return name


def _window(lifter: Lifter, axis: str, size: int, taken: set[str]) -> str:
    """The window along free axis `H`: a dim `wh` declared as the configured size it equals (`wh: window`)."""
    dims = lifter.dims
    base = next((k for k in sorted(dims.ordered(), key=lambda k: "window" not in k)
                 if dims.values[k] == size and "head" not in k and "layer" not in k and k not in dims.derived), None)
    stem = (base[0] if base else "w") + axis[0].lower()
    name, k = stem, 0
    while (name in dims.values and dims.values[name] != size) or name in dims.free.values() or name in taken \
            or name in getattr(lifter, "counts", {}):
        k += 1
        name = f"{stem}_{k}"
    if name not in dims.values:
        dims.values[name] = size
        if base:
            dims.derived[name] = base
        else:      # a literal size (`(2 c1)`): this piece's name, never the name of another axis of that size
            dims.placed.add(name)
    dims.used.add(name)
    if base:
        dims.used.add(base)
    return name


def align(lifter: Lifter, n: fx.Node, a: Any, b: Any) -> tuple[Any, Any]:
    """`a` and `b` of a torch broadcast, the one with fewer named axes relabelled to the names of the dims it
    aligns with by position (where they differ and it can be written as a relabel)."""
    if not isinstance(a, L) or not isinstance(b, L):
        return a, b
    ra, rb = list(reversed(a.axes)), list(reversed(b.axes))
    pairs = list(zip(ra, rb, strict=False))
    if all(not x or not y or x == y for x, y in pairs):
        return a, b
    for x, other, first in ((a, b, True), (b, a, False)):
        back = _merged_back(lifter, n, x, other)
        if back is not None:
            return (back, b) if first else (a, back)
    small, big, swap = (b, a, False) if len(b.flat()) <= len(a.flat()) else (a, b, True)
    got = _relabelled(lifter, n, small, big)
    if got is None:
        return a, b
    return (got, b) if swap else (a, got)


def _merged_back(lifter: Lifter, n: fx.Node, x: L, other: L) -> L | None:
    """`x` with each dim holding the pieces of a fixed grid axis (`(nh wh)`, windows merged back) named as the one
    dim of `other` it aligns with (`h0`), or None. Swin's residual `x + reversed windows`: the stream keeps its grid
    axes, so a layer returns what it takes (`repeat`). One group at a time (a merged axis is named by its size, two
    of one size at once would clash), each a merge and a relabel, which is torch's positional alignment."""
    from nnspec.importer import ops

    dims = lifter.dims
    todo = []
    for i in range(1, min(len(x.axes), len(other.axes)) + 1):
        gx, go = x.axes[-i], other.axes[-i]
        if gx == go or not gx or not go:
            continue
        if len(gx) < 2 or len(go) != 1 or go[0] in x.flat() or go[0] not in dims.values or go[0] in dims.local \
                or not all(p in dims.values for p in gx):
            return None
        todo.append(len(x.axes) - i)
    if not todo:
        return None
    scope, idx = lifter.scope_of(n), lifter.index[n]
    for d in sorted(todo):
        x = ops.merge_groups(lifter, x, [d], n)
        old, new = x.axes[d][0], other.axes[d - len(x.axes) + len(other.axes)][0]
        items = [new if a == old else a for a in x.order]        # no alias: `new` is a dim of its own size
        x = L("{0}" + annotation(list(items)), [x], [(new,) if g == (old,) else g for g in x.axes], items, scope,
              idx - 0.05, hint=x.hint)
    return x


def _relabelled(lifter: Lifter, n: fx.Node, x: L, other: L) -> L | None:
    from nnspec.importer import ops

    target: dict[str, tuple[str, ...]] = {}
    for gx, go in zip(reversed(x.axes), reversed(other.axes), strict=False):
        if not gx:
            continue
        if not go:
            return None
        if gx == go:
            for a in gx:
                target[a] = (a,)
            continue
        if len(gx) == 1:
            target[gx[0]] = tuple(go)
        elif len(gx) == len(go):
            target.update({a: (b,) for a, b in zip(gx, go, strict=True)})
        else:
            return None
    if len(target) != len(x.order) or set(target) != set(x.order):
        return None
    new = [p for a in x.order for p in target[a]]
    if len(set(new)) != len(new) or set(new) == set(x.order):
        return None                              # the same names again would be read as a rearrange
    items: list[str | tuple[str, ...]] = [target[a] if len(target[a]) > 1 else target[a][0] for a in x.order]
    axes = [tuple(p for a in g for p in target[a]) for g in x.axes]
    scope, idx = lifter.scope_of(n), lifter.index[n]
    return L("{0}" + annotation(items), [ops._bound(x)], axes, new, scope, idx - 0.05, hint=x.hint)


HANDLERS: dict[str, Any] = {name: reshape for name in ("aten.view.default", "aten.reshape.default",
                                                        "aten._unsafe_view.default")}


def one_name(lifter: Lifter, x: L, d: int, n: fx.Node) -> L:
    """`x` with torch dim `d`'s merged axis (`S*ww_k`, which `over=` cannot name) relabelled to a new name (`M`):
    a softmax or sum over a window's keys, which torch holds as one dim."""
    from nnspec.importer import ops

    old = x.axes[d][0]
    if "*" not in old:
        return x
    size = ops._size_of_name(lifter, old, n)
    made: dict[str, str] = lifter.__dict__.setdefault("one_names", {})
    taken = set(lifter.dims.values) | set(lifter.dims.free.values()) | set(x.flat()) | set(lifter.dims.local)
    new = made.get(old)
    if new is None or new in x.flat() or lifter.dims.local.get(new) != size or new in lifter.dims.aliases:
        # one name per merged axis, so that a repeat's layers, each merging it anew, name it alike
        new = next(c for c in ("M", "N", "K", *(f"M_{k}" for k in range(1, 99))) if c not in taken)
        made[old] = new
    lifter.dims.local[new] = size
    items = [new if a == old else a for a in x.order]
    axes = [(new,) if i == d else g for i, g in enumerate(x.axes)]
    return L("{0}" + annotation(list(items)), [x], axes, list(items), x.scope, x.idx + 0.001, hint=x.hint)


def summed_alike(lifter: Lifter, n: fx.Node, ga: tuple[str, ...], b: L, scope: str, idx: float) -> L:
    """`b` with the dim a matmul sums (its second last) named as the first operand's last, `ga`: one axis
    relabelled, a group of pieces of equal sizes (a window's `(wh ww)` against the keys' `(S ww_k)`) pair by pair,
    or a group merged and relabelled to the one axis it meets (`M`, a window's keys after a softmax)."""
    from nnspec.importer import ops
    from nnspec.importer.patterns import relabel

    gb = b.axes[-2]
    if len(ga) == 1 and len(gb) > 1:
        b = ops.merge_groups(lifter, b, [len(b.axes) - 2], n)
        gb = b.axes[-2]
    sizes = [[ops._size_of_name(lifter, g, n) for g in grp] for grp in (ga, gb)]
    if len(ga) != len(gb) or sizes[0] != sizes[1] or (len(ga) > 1 and set(ga) & set(b.flat())):
        raise lifter.fail(n, f"a matmul summing axes grouped differently ({ga} and {gb})")
    for old, new in zip(gb, ga, strict=True):
        b = relabel(lifter, b, old, new, scope, idx)
    return b


def second_free(lifter: Lifter, first: str) -> str:
    """The name of an input's later dim of the same free size as an earlier one (a graph's `adj[B, T, S]`, the
    second node axis): a free dim of its own (`S`, as the keys of a score contraction are called), required equal
    to the first (`require: S == T`), since torch aligns the two by position only where they meet."""
    seconds: dict[str, str] = lifter.__dict__.setdefault("seconds", {})
    if first not in seconds:
        dims = lifter.dims
        taken = set(dims.values) | set(dims.free.values()) | set(dims.local) | set(seconds.values())
        seconds[first] = next(c for c in ("S", "K", "M", *(f"S_{k}" for k in range(2, 99))) if c not in taken)
        dims.aliases.setdefault(seconds[first], first)
    return seconds[first]


def grid_names(lifter: Lifter, over: tuple[str, str], sizes: tuple[int, ...], out: tuple[int, ...], x: L,
               n: fx.Node) -> tuple[str, str]:
    """The axes a 2-d convolution makes (`into=`): the input's own where it keeps the grid's size (a padded 3x3,
    PVT's Mix-FFN), else `gh`, `gw`, numbered apart from another grid of other sizes (a spatial reduction's shrunk
    grid beside the patch grid)."""
    if x.scope != lifter.scope_of(n) and any(a.startswith(("gh", "gw")) and a in lifter.dims.local
                                             and a not in lifter.dims.aliases for a in over):
        raise lifter.fail(n, f"a convolution over a square grid ({', '.join(over)}) made in another block, which the "
                             "language names by its size there (`16`, `16_1`)")
    if tuple(out) == tuple(sizes):
        return over
    if not any(_free(lifter, a) for a in over):
        # named after the dims continuing the input axes' own (`height0` -> `height1`): dims keep their names
        # outside the block, so a square grid's two axes stay apart there
        named = tuple(lifter.dims.successor(a, int(s), set(x.flat())) for a, s in zip(over, out, strict=True))
        if all(named) and named[0] != named[1]:
            lifter.dims.used.update(named)
            return named
    local, k = lifter.dims.local, 0
    while True:
        names = ("gh", "gw") if k == 0 else (f"gh_{k}", f"gw_{k}")
        if all(local.get(a, s) == s for a, s in zip(names, out, strict=True)):
            local.update(zip(names, (int(s) for s in out), strict=True))
            if not any(_free(lifter, a) for a in over) and out[0] != out[1]:
                # made up inside a block, the caller sees a fixed grid under its size's name (`16`, `24`); a square
                # one's second is `16_1` there, which no annotation group can write: kept as it was (ViT flattens
                # its grid inside the block)
                for a, s in zip(names, out, strict=True):
                    lifter.dims.aliases.setdefault(a, str(int(s)))
            return names
        k += 1


def plain_names(lifter: Lifter, x: L, n: fx.Node) -> L:
    """`x` with each axis named by a size expression (`2*d`, a linear's or convolution's width; or a merge) relabelled
    to a new plain name (`F`), so that a rearrange can list it: written as a group it would split instead."""
    from nnspec.importer import ops

    odd = [a for a in x.order if "*" in a]
    if not odd:
        return x
    taken = set(lifter.dims.values) | set(lifter.dims.free.values()) | set(x.flat()) | set(lifter.dims.local)
    fresh = iter(c for c in ("F", "G", *(f"F_{k}" for k in range(1, 99))) if c not in taken)
    rename = {}
    for a in odd:
        rename[a] = next(fresh)
        lifter.dims.local[rename[a]] = ops._size_of_name(lifter, a, n)
        lifter.dims.aliases.setdefault(rename[a], a)     # outside its block, `F` is the size it names (`2*d`)
    items = [rename.get(a, a) for a in x.order]
    axes = [tuple(rename.get(a, a) for a in g) for g in x.axes]
    return L("{0}" + annotation(list(items)), [ops._bound(x)], axes, items, x.scope, x.idx + 0.005, hint=x.hint)
