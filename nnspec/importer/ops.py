"""The generic aten op table: shape ops move named axes around, elementwise ops are the language's operators and
functions. Anything else is refused with the op and the module path."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from nnspec.importer.graph import L, annotation, merged_name, unmerged

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter

_CALL2 = {"aten.maximum.default": "max", "aten.minimum.default": "min"}
_BINARY = {"aten.gt.Tensor": ">", "aten.lt.Tensor": "<", "aten.ge.Tensor": ">=", "aten.le.Tensor": "<=",
           "aten.gt.Scalar": ">", "aten.lt.Scalar": "<", "aten.ge.Scalar": ">=", "aten.le.Scalar": "<=",
           "aten.eq.Tensor": "==", "aten.eq.Scalar": "==", "aten.ne.Tensor": "!=", "aten.ne.Scalar": "!=",
           "aten.add.Tensor": "+", "aten.sub.Tensor": "-", "aten.mul.Tensor": "*", "aten.div.Tensor": "/",
           "aten.add.Scalar": "+", "aten.mul.Scalar": "*", "aten.sub.Scalar": "-", "aten.div.Scalar": "/"}
_UNARY = {"aten.tanh.default": "tanh", "aten.rsqrt.default": "rsqrt", "aten.sqrt.default": "sqrt",
          "aten.exp.default": "exp", "aten.sigmoid.default": "sigmoid", "aten.silu.default": "silu",
          "aten.relu.default": "relu", "aten.sin.default": "sin", "aten.cos.default": "cos",
          "aten.log.default": "log", "aten.abs.default": "abs", "aten.softplus.default": "softplus",
          "aten.expm1.default": "expm1", "aten.log1p.default": "log1p", "aten.floor.default": "floor",
          "aten.sign.default": "sign"}


def _scope_idx(lifter: Lifter, n: fx.Node) -> tuple[str, int]:
    return lifter.scope_of(n), lifter.index[n]


def lift_op(lifter: Lifter, n: fx.Node) -> Any:
    name = str(n.target)
    handler = _HANDLERS.get(name)
    if handler is not None:
        return handler(lifter, n)
    if name in _BINARY:
        return _binary(lifter, n, _BINARY[name])
    if name in _CALL2:
        a, b = lifter.lift(n.args[0]), lifter.lift(n.args[1])
        scope, idx = _scope_idx(lifter, n)
        if isinstance(a, L) and _scalar(lifter, n.args[1]) is not None:    # `max(z, 0.5)`: a 0-d constant operand
            return L(f"{_CALL2[name]}({{0}}, {_literal(_scalar(lifter, n.args[1]))})", [a], a.axes, a.order, scope,
                     idx, hint=a.hint)
        if not isinstance(a, L) or not isinstance(b, L):
            raise lifter.fail(n, "an elementwise max/min with a constant")
        axes = _broadcast(lifter, n, a, b)
        return L(f"{_CALL2[name]}({{0}}, {{1}})", [a, b], axes, a.order + [x for x in b.order if x not in a.order],
                 scope, idx, hint="h")
    if name in _UNARY:
        if list(n.args[1:]) not in ([], [1, 20]):            # softplus's beta and threshold: the defaults only
            raise lifter.fail(n, f"{_UNARY[name]} with arguments {list(n.args[1:])}")
        x = lifter.lift(n.args[0])
        scope, idx = _scope_idx(lifter, n)
        return L(f"{_UNARY[name]}({{0}})", [x], x.axes, x.order, scope, idx, hint=x.hint)
    raise lifter.fail(n, "no lifting rule for this op")


def _scalar(lifter: Lifter, node: Any) -> float | None:
    """The number a 0-d constant tensor (`torch.tensor(0.5)`, as `torch.maximum(x, 0.5)` is traced) holds."""
    v = lifter.value(node)
    if isinstance(node, fx.Node) and lifter.resolve(node) in lifter.static and isinstance(v, torch.Tensor) \
            and v.dim() == 0 and v.is_floating_point():
        return float(v)
    return None


def _literal(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    return str(v)


def _binary(lifter: Lifter, n: fx.Node, sym: str) -> L:
    # dims torch aligns by position, named alike (`windows.align`, reached through the rules: no import cycle)
    a, b = lifter.rules.align(lifter, n, *(lifter.lift(x) for x in n.args[:2]))
    scope, idx = _scope_idx(lifter, n)
    if not isinstance(a, L) and not isinstance(b, L):
        raise lifter.fail(n, "arithmetic on two non-tensors")
    if not isinstance(b, L):
        return L(f"{{0}} {sym} {_literal(b)}", [a], a.axes, a.order, scope, idx, atom=False, hint=a.hint)
    if not isinstance(a, L):
        return L(f"{_literal(a)} {sym} {{0}}", [b], b.axes, b.order, scope, idx, atom=False, hint=b.hint)
    axes = _broadcast(lifter, n, a, b)
    order = a.order + [x for x in b.order if x not in a.order]
    return L(f"{{0}} {sym} {{1}}", [a, b], axes, order, scope, idx, atom=False, hint="h")


def _broadcast(lifter: Lifter, n: fx.Node, a: L, b: L) -> list[tuple[str, ...]]:
    """`aligned_axes`, where one operand's axes include the other's (an outer broadcast is `outer.py`'s)."""
    axes = aligned_axes(lifter, n, a, b)
    if not (set(a.flat()) >= set(b.flat()) or set(b.flat()) >= set(a.flat())):
        raise lifter.fail(n, "an outer broadcast (each operand has an axis the other lacks)")
    return axes


def aligned_axes(lifter: Lifter, n: fx.Node, a: L, b: L) -> list[tuple[str, ...]]:
    """The result's axes of a broadcast of `a` and `b`. Torch broadcasts by position, the language by name: the
    two agree when aligned dims carry the same names or one side has none (size 1)."""
    ra, rb = list(reversed(a.axes)), list(reversed(b.axes))
    out = []
    for i in range(max(len(ra), len(rb))):
        x = ra[i] if i < len(ra) else ()
        y = rb[i] if i < len(rb) else ()
        if x and y and x != y:
            raise lifter.fail(n, f"operands align axes {x} and {y} by position, which names cannot express")
        out.append(x or y)
    return list(reversed(out))


def _pow(lifter: Lifter, n: fx.Node) -> L:
    x, e = lifter.lift(n.args[0]), n.args[1]
    scope, idx = _scope_idx(lifter, n)
    return L(f"{{0}} ** {_literal(e)}", [x], x.axes, x.order, scope, idx, atom=False, hint=x.hint)


def _neg(lifter: Lifter, n: fx.Node) -> L:
    x = lifter.lift(n.args[0])
    scope, idx = _scope_idx(lifter, n)
    return L("-{0}", [x], x.axes, x.order, scope, idx, atom=False, hint=x.hint)


def _gelu(lifter: Lifter, n: fx.Node) -> L:
    x = lifter.lift(n.args[0])
    fn = "gelu_tanh" if n.kwargs.get("approximate", "none") == "tanh" else "gelu"
    scope, idx = _scope_idx(lifter, n)
    return L(f"{fn}({{0}})", [x], x.axes, x.order, scope, idx, hint=x.hint)


def _dim(x: L, d: int) -> int:
    return d % len(x.axes) if x.axes else 0


def _softmax(lifter: Lifter, n: fx.Node) -> L:
    x = lifter.lift(n.args[0])
    d = _dim(x, n.args[1])
    if not x.axes[d]:          # over one element: 1 (nan where x is not finite, as `x - max(x)` is then)
        scope, idx = _scope_idx(lifter, n)
        return L("exp({0} - {1})", [x, x], x.axes, x.order, scope, idx, atom=False, hint=x.hint)
    if len(x.axes[d]) != 1:
        x = lifter.rules.one_name(lifter, merge_groups(lifter, x, [d], n), d, n)
    scope, idx = _scope_idx(lifter, n)
    return L(f"softmax({{0}}, over={x.axes[d][0]})", [x], x.axes, x.order, scope, idx, hint=x.hint)


def _mean(lifter: Lifter, n: fx.Node) -> L:
    x = lifter.lift(n.args[0])
    dims = n.args[1] if len(n.args) > 1 else list(range(len(x.axes)))
    keep = n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False)
    if len(dims) != 1:
        raise lifter.fail(n, "a mean over several dims")
    d = _dim(x, dims[0])
    if not x.axes[d]:
        # over a size-1 dim (`sum(linear(x, 1), over=1)`): every reduction is the value, that dim dropped
        return _view_of(lifter, n, x, x.axes if keep else x.axes[:d] + x.axes[d + 1:], x.order)
    if len(x.axes[d]) != 1 or "*" in x.axes[d][0]:      # `over=` names one axis, never a merged one
        x = lifter.rules.one_name(lifter, merge_groups(lifter, x, [d], n) if len(x.axes[d]) != 1 else x, d, n)
    ax = x.axes[d][0]
    fn = next(f for f in ("mean", "sum", "max", "min") if f in str(n.target).replace("amax", "max")
              .replace("amin", "min"))
    axes = [a if i != d else () for i, a in enumerate(x.axes)] if keep else [a for i, a in enumerate(x.axes) if i != d]
    scope, idx = _scope_idx(lifter, n)
    return L(f"{fn}({{0}}, over={ax})", [x], axes, [o for o in x.order if o != ax], scope, idx, hint=x.hint)


def _transpose(lifter: Lifter, n: fx.Node) -> L:
    x = lifter.lift(n.args[0])
    perm = list(range(len(x.axes)))
    i, j = _dim(x, n.args[1]), _dim(x, n.args[2])
    perm[i], perm[j] = perm[j], perm[i]
    return _permuted(lifter, n, x, perm)


def _permute(lifter: Lifter, n: fx.Node) -> L:
    x = lifter.lift(n.args[0])
    return _permuted(lifter, n, x, [_dim(x, d) for d in n.args[1]])


def _permuted(lifter: Lifter, n: fx.Node, x: L, perm: list[int]) -> L:
    """Torch's layout changes; the named value does not, so nothing is written."""
    return _view_of(lifter, n, x, [x.axes[p] for p in perm], x.order)


def _view_of(lifter: Lifter, n: fx.Node, x: L, axes: list[tuple[str, ...]], order: list[str]) -> L:
    scope, idx = _scope_idx(lifter, n)
    return L("{0}", [x], axes, order, scope, idx, atom=x.atom, hint=x.hint)


def _unsqueeze(lifter: Lifter, n: fx.Node) -> L:
    x = lifter.lift(n.args[0])
    d = n.args[1] % (len(x.axes) + 1)
    return _view_of(lifter, n, x, x.axes[:d] + [()] + x.axes[d:], x.order)


def _expand(lifter: Lifter, n: fx.Node) -> L:
    """Expanding a size-1 dim is broadcasting, which names do at the use."""
    x = lifter.lift(n.args[0])
    sizes = list(n.args[1])
    axes = [()] * (len(sizes) - len(x.axes)) + list(x.axes)
    return _view_of(lifter, n, x, axes, x.order)


def _squeeze(lifter: Lifter, n: fx.Node) -> L:
    x = lifter.lift(n.args[0])
    shape = lifter.value(n.args[0]).shape
    dims = n.args[1] if len(n.args) > 1 else [i for i, s in enumerate(shape) if s == 1]
    dims = [dims] if isinstance(dims, int) else list(dims)
    drop = {_dim(x, d) for d in dims if shape[_dim(x, d)] == 1}
    if any(x.axes[d] for d in drop):
        raise lifter.fail(n, "squeezing a named size-1 axis")
    return _view_of(lifter, n, x, [a for i, a in enumerate(x.axes) if i not in drop], x.order)


def merge_groups(lifter: Lifter, x: L, dims: list[int], n: fx.Node) -> L:
    """Write a rearrange that merges the named axes of each torch dim in `dims` into one axis."""
    items: list[str | tuple[str, ...]] = []
    axes: list[tuple[str, ...]] = []
    for i, group in enumerate(x.axes):
        if i in dims and len(group) > 1:
            items.append(group)
            axes.append((merged_name(group),))
        else:
            items.extend(group)
            axes.append(group)
    # merged where the value is made: names made up inside a block (a conv's `into=`) do not leave it
    x = _bound(x)
    return L("{0}" + annotation(items), [x], axes, [a for g in axes for a in g], x.scope, x.idx + 0.01,
             hint=x.hint)


def _bound(x: L) -> L:
    """Make `x` safe to annotate: bound to a variable unless it is one (a layout-only view of a bound value)."""
    if x.fmt == "{0}" and len(x.refs) == 1 and x.member is None:
        _bound(x.refs[0])
    elif not x.atom:
        x.bind = True
    return x


def _reshape(lifter: Lifter, n: fx.Node) -> L:
    x = lifter.lift(n.args[0])
    src = list(lifter.value(n.args[0]).shape)
    tgt = list(lifter.value(n).shape)
    atoms: list[tuple[str, int]] = []
    sizes = _axis_sizes(lifter, x, src, n)
    for group in x.axes:
        atoms.extend((a, sizes[a]) for a in group)
    out: list[tuple[str, ...]] = []
    splits: dict[str, list[str]] = {}
    k = 0
    for t in tgt:
        if t == 1:
            out.append(())
            continue
        group: list[str] = []
        prod = 1
        while prod < t and k < len(atoms):
            name, size = atoms[k]
            if prod * size <= t and t % (prod * size) == 0:
                group.append(name)
                prod *= size
                k += 1
                continue
            break
        if prod == t:
            out.append(tuple(group))
            continue
        if group:
            raise lifter.fail(n, f"a reshape that cuts across axes {group} and {atoms[k][0]}")
        # split one axis over several target dims
        name, size = atoms[k]
        parts, rest = [], size
        pos = len(out)
        for t2 in tgt[pos:]:
            if rest == 1:
                break
            if rest % t2:
                raise lifter.fail(n, f"a reshape that splits axis {name} unevenly")
            parts.append(t2)
            rest //= t2
        pieces = lifter.dims.split(name, size, [p for p in parts], source=x.hint)
        splits[name] = pieces
        k += 1
        return _finish_split(lifter, n, x, out, pieces, tgt, pos + len(parts), atoms, k, splits)
    if k != len(atoms):
        raise lifter.fail(n, "a reshape lifted inconsistently")
    return _view_of(lifter, n, x, out, x.order)


def _finish_split(lifter: Lifter, n: fx.Node, x: L, out: list[tuple[str, ...]], pieces: list[str],
                  tgt: list[int], pos: int, atoms: list[tuple[str, int]], k: int, splits: dict[str, list[str]]) -> L:
    """Write the split as an annotation, then lift the rest of the reshape on the split value."""
    items: list[str | tuple[str, ...]] = []
    for a in x.order:
        items.append(tuple(splits[a]) if a in splits else a)
    axes = [tuple(p for a in g for p in (splits.get(a) or [a])) for g in x.axes]
    order = [p for a in x.order for p in (splits.get(a) or [a])]
    scope, idx = _scope_idx(lifter, n)
    y = L("{0}" + annotation(items), [_bound(x)], axes, order, scope, idx, hint=x.hint)
    fake = _Reshaped(y, tgt)
    return _regroup(lifter, n, fake)


class _Reshaped:
    def __init__(self, x: L, tgt: list[int]) -> None:
        self.x, self.tgt = x, tgt


def _regroup(lifter: Lifter, n: fx.Node, r: _Reshaped) -> L:
    """After splits, the target dims are regroupings of named axes."""
    x = r.x
    sizes = {a: s for a, s in _known_sizes(lifter, n, x).items()}
    atoms = [(a, sizes[a]) for g in x.axes for a in g]
    out: list[tuple[str, ...]] = []
    k = 0
    for t in r.tgt:
        if t == 1:
            out.append(())
            continue
        group, prod = [], 1
        while prod < t and k < len(atoms):
            group.append(atoms[k][0])
            prod *= atoms[k][1]
            k += 1
        if prod != t:
            raise lifter.fail(n, "a reshape that cuts across named axes")
        out.append(tuple(group))
    return _view_of(lifter, n, x, out, x.order)


def _known_sizes(lifter: Lifter, n: fx.Node, x: L) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for a in x.flat():
        sizes[a] = _size_of_name(lifter, a, n)
    return sizes


def _size_of_name(lifter: Lifter, name: str, n: fx.Node) -> int:
    free = {v: k for k, v in lifter.dims.free.items()}
    total = 1
    for part in name.split("*"):
        seen = set()
        while part in lifter.dims.aliases and part not in seen:
            seen.add(part)
            part = lifter.dims.aliases[part]
        if part in free:
            total *= free[part]
        elif part in lifter.dims.values:
            total *= lifter.dims.values[part]
        elif part in lifter.dims.local:
            total *= lifter.dims.local[part]
        elif part.isdigit():
            total *= int(part)
        else:
            raise lifter.fail(n, f"cannot tell the size of axis {name}")
    return total


def _axis_sizes(lifter: Lifter, x: L, shape: list[int], n: fx.Node) -> dict[str, int]:
    return {a: _size_of_name(lifter, a, n) for a in x.flat()}


def getitem(lifter: Lifter, n: fx.Node) -> Any:
    src, i = n.args
    tup = lifter.lift(src)
    if isinstance(tup, list):
        return tup[i]
    raise lifter.fail(n, "indexing a value that is not a tuple")


def _split(lifter: Lifter, n: fx.Node) -> list[L]:
    """`split(x, size, dim)` into equal parts: name the axis `(k rest)` and unpack over `k`."""
    x = lifter.lift(n.args[0])
    size = n.args[1]
    d = _dim(x, n.args[2] if len(n.args) > 2 else 0)
    total = lifter.value(n.args[0]).shape[d]
    if not isinstance(size, int) or total % size or len(x.axes[d]) != 1:
        raise lifter.fail(n, "only a split into equal parts along one named axis is lifted")
    k = total // size
    piece = lifter.dims.name(size)
    ax = x.axes[d][0]
    items: list[str | tuple[str, ...]] = [(str(k), piece) if a == ax else a for a in x.order]
    scope, idx = _scope_idx(lifter, n)
    tup = L("split({0}" + annotation(items) + f", over={k})", [_bound(x)], [], [], scope, idx, bind=True,
            hint="part")
    tup.names = [f"part{j}" for j in range(k)]
    axes = [(piece,) if i == d else a for i, a in enumerate(x.axes)]
    order = [piece if a == ax else a for a in x.order]
    return [L("{0}", [tup], axes, order, scope, idx, member=(tup, j)) for j in range(k)]


def _select(lifter: Lifter, n: fx.Node) -> L:
    """`x[:, i]` is `take(x, over=AXIS, index=i)`."""
    x = lifter.lift(n.args[0])
    d, i = _dim(x, n.args[1]), n.args[2]
    if len(x.axes[d]) != 1:
        raise lifter.fail(n, "indexing a merged or size-1 axis")
    size = lifter.value(n.args[0]).shape[d]
    i = i % size
    scope, idx = _scope_idx(lifter, n)
    ax = x.axes[d][0]
    if ax.isdigit():                               # an axis of literal size (`3` of q, k, v): one split member
        return L(f"split({{0}}, over={ax})[{i}]", [_bound(x)], x.axes[:d] + x.axes[d + 1:],
                 [a for a in x.order if a != ax], scope, idx, hint=x.hint)
    return L(f"take({{0}}, over={ax}, index={i})", [x], x.axes[:d] + x.axes[d + 1:],
             [a for a in x.order if a != ax], scope, idx, hint=x.hint)


def _slice(lifter: Lifter, n: fx.Node) -> Any:
    x = lifter.lift(n.args[0])
    shape = lifter.value(n.args[0]).shape
    d = _dim(x, n.args[1] if len(n.args) > 1 else 0)
    start = n.args[2] if len(n.args) > 2 and n.args[2] is not None else 0
    stop = min(n.args[3] if len(n.args) > 3 and n.args[3] is not None else shape[d], shape[d])
    step = n.args[4] if len(n.args) > 4 else 1
    if start == 0 and stop == shape[d] and step == 1:
        return x                                   # a whole-axis slice is the value itself
    raise lifter.fail(n, "a slice of part of an axis outside a recognised pattern")


def _flatten(lifter: Lifter, n: fx.Node) -> L:
    """`flatten(x, start, end)` groups the named axes of those dims into one torch dim (nothing is written)."""
    x = lifter.lift(n.args[0])
    start = _dim(x, n.args[1] if len(n.args) > 1 else 0)
    end = _dim(x, n.args[2] if len(n.args) > 2 else -1)
    group = tuple(a for g in x.axes[start:end + 1] for a in g)
    return _view_of(lifter, n, x, x.axes[:start] + [group] + x.axes[end + 1:], x.order)


def _cat(lifter: Lifter, n: fx.Node) -> L:
    """`cat([a, b], d)` is `concat(a, b, over=(N, M), into=SIZE)`; an operand with size 1 at d (a class token)
    contributes one entry, as the language's concat does for an operand lacking the axis."""
    parts = [lifter.lift(p) for p in n.args[0]]
    if not all(isinstance(p, L) for p in parts):
        raise lifter.fail(n, "a concatenation with a constant table (padding)")
    d = _dim(parts[0], n.args[1] if len(n.args) > 1 else 0)
    scope, idx = _scope_idx(lifter, n)
    over, ops = [], []
    for j, p in enumerate(parts):
        if not p.axes[d]:
            ops.append(p)
            continue
        if len(p.axes[d]) > 1:
            p = merge_groups(lifter, p, [d], n)
        label = "N" if j == len(parts) - 1 else f"N{j}"
        items = [label if a == p.axes[d][0] else a for a in p.order]
        axes = [(label,) if i == d else g for i, g in enumerate(p.axes)]
        p = L("{0}" + annotation(items), [_bound(p)], axes, items, scope, idx - 0.4, hint="tokens", bind=True)
        ops.append(p)
        over.append(label)
    into = lifter.dims.name(lifter.value(n).shape[d])
    if len(over) != 1:
        raise lifter.fail(n, "a concatenation of several sequences")
    fmt = "concat(" + ", ".join(f"{{{j}}}" for j in range(len(ops))) + f", over={over[0]}, into={into})"
    full = next(p for p in ops if p.axes[d])
    axes = [(into,) if i == d else g for i, g in enumerate(full.axes)]
    return L(fmt, ops, axes, [into if a == over[0] else a for a in full.order], scope, idx, hint="h")


def _linear(lifter: Lifter, n: fx.Node) -> L:
    """`F.linear(h, emb.weight)` outside a Linear module: a head tied to an embedding, the contraction
    `h * emb.weight` (any other functional linear is refused: its weight has no module to be named after)."""
    key = lifter.param_path(n.args[1])
    bias = n.args[2] if len(n.args) > 2 else None
    owner = key.rsplit(".", 1)[0] if key else None
    from torch import nn

    if key is None and bias is None and isinstance(w := lifter.lift(n.args[1]), L) and len(w.axes) == 2:
        return _linear_of(lifter, n, lifter.lift(n.args[0]), w)
    if key is None or bias is not None or not isinstance(lifter.modules.get(owner), nn.Embedding):
        raise lifter.fail(n, "a functional linear whose weight is not an embedding's (tied head)")
    x = lifter.lift(n.args[0])
    if len(x.axes[-1]) != 1:
        x = merge_groups(lifter, x, [len(x.axes) - 1], n)
    from nnspec.importer.tied import head_axis

    out = head_axis(lifter, owner, lifter.value(n).shape[-1])     # the embedding's count, not its size's name
    if (out,) == x.axes[-1]:
        raise lifter.fail(n, f"a tied head whose vocabulary and features are both named {out} (equal sizes)")
    axes = x.axes[:-1] + [(out,)]
    scope, idx = _scope_idx(lifter, n)
    node = L(f"{{0}} * {owner.rsplit('.', 1)[-1]}.weight", [x], axes, [a for g in axes for a in g], scope, idx,
             atom=False, hint="h", bind=True)
    node.annot = ", ".join(a for g in axes for a in g)
    return node


def _linear_of(lifter: Lifter, n: fx.Node, x: L, w: L) -> L:
    """`F.linear(x, w)` with a computed weight (`param(E, F, H).flatten(0, 1)`): the contraction
    `h[..., E, F] = x * w` summing x's last axis with w's."""
    from nnspec.importer.patterns import relabel

    scope, idx = _scope_idx(lifter, n)
    gx, (go, gi) = x.axes[-1], w.axes
    if gx != gi:
        if len(gx) != 1 or len(gi) != 1:
            raise lifter.fail(n, f"a linear summing axes grouped differently ({gx} and {gi})")
        w = relabel(lifter, w, gi[0], gx[0], scope, idx - 0.1)
    axes = x.axes[:-1] + [go]
    names = [a for g in axes for a in g]
    if not gx or not go or len(set(names)) != len(names):
        raise lifter.fail(n, "a linear whose output axes repeat an input's name")
    node = L("{0} * {1}", [x, w], axes, names, scope, idx, atom=False, hint="h", bind=True)
    node.annot = ", ".join(names)
    return node


def _matmul(lifter: Lifter, n: fx.Node) -> L:
    """`a @ b` over the last two dims is the contraction `s[..., I, J] = a * b` with the summed axis given one name
    in both operands and the free axes distinct names (keys become `S` where they would collide with queries). A
    free torch dim holding several named axes (`(T groups)` of grouped-query scores) keeps them: the contraction
    names every axis of the result, so nothing needs merging."""
    from nnspec.importer.patterns import relabel

    a, b = lifter.lift(n.args[0]), lifter.lift(n.args[1])
    if not isinstance(a, L) or not isinstance(b, L) or len(a.axes) < 2 or len(b.axes) < 2:
        raise lifter.fail(n, "a matmul of a vector or a constant")
    scope, idx = _scope_idx(lifter, n)
    # merged names (`n_heads*head_dim`) cannot be written in the contraction's target: split them back first
    # a summed width `2*n_embd` whose pieces would repeat `n_embd` (`h * up.weight`) keeps its name in both
    keep = any(len(set(o)) != len(o) for o in ([p for x in t.order for p in x.split("*")] for t in (a, b)))
    a, b = (_split_merged(lifter, n, t, scope, idx - 0.2, summed if keep else None) for t, summed in ((a, -1), (b, -2)))
    for j in b.axes[-1]:
        if j in a.flat() and j not in a.axes[-1]:
            b = relabel(lifter, b, j, "S" if "S" not in a.flat() + b.flat() else f"{j}_k", scope, idx - 0.1)
    ga, gb = a.axes[-1], b.axes[-2]
    if ga != gb:
        b = lifter.rules.summed_alike(lifter, n, ga, b, scope, idx - 0.1)     # b's summed dim named as a's
    if any(len(t.axes[d]) == 0 for t in (a, b) for d in (-1, -2)):
        raise lifter.fail(n, "a matmul over size-1 axes")
    if set(a.axes[-2]) & set(b.axes[-1]):
        raise lifter.fail(n, "a matmul whose two free axes share a name")
    batch = _broadcast(lifter, n, L("", [], a.axes[:-2], [], scope, idx), L("", [], b.axes[:-2], [], scope, idx)) \
        if a.axes[:-2] or b.axes[:-2] else []
    axes = list(batch) + [a.axes[-2], b.axes[-1]]
    names = [x for g in axes for x in g]
    node = L("{0} * {1}", [a, b], axes, names, scope, idx, atom=False, hint="s", bind=True)
    node.annot = ", ".join(names)
    back = b.axes[-1][0][:-3] if len(b.axes[-1]) == 1 and b.axes[-1][0].endswith("_in") and not b.refs else None
    if back and back not in names and b.axes[-2] == (back,):   # a square weight's `d_in` (`h * up.weight`) was `d`
        return relabel(lifter, node, b.axes[-1][0], back, scope, idx + 0.01)
    return node


def _split_merged(lifter: Lifter, n: fx.Node, x: L, scope: str, idx: float, summed: int | None = None) -> L:
    """`x[B, (n_heads head_dim), S]` for an `x` with a merged axis `n_heads*head_dim`: its pieces named again. A
    summed dim (`summed`: its pieces would repeat another axis's name, a width `2*n_embd` summed against `n_embd`)
    never reaches the target: it keeps its one name, as the other operand's does."""
    whole = x.axes[summed] if summed is not None and len(x.axes[summed]) == 1 else ()
    if not any("*" in a for a in x.flat() if a not in whole):
        return x
    order = [p for a in x.order for p in a.split("*")]
    if len(set(order)) != len(order) or whole:
        # (an annotation cannot name a whole `2*n_embd` beside a group it splits)
        raise lifter.fail(n, f"a matmul over a merged axis whose pieces repeat another axis's name ({x.order})")
    return L("{0}" + annotation(list(x.order)), [_bound(x)], unmerged(x.axes), order, scope, idx, hint=x.hint)


_HANDLERS: dict[str, Callable[[Lifter, fx.Node], Any]] = {
    "aten.matmul.default": _matmul,
    "aten.linear.default": _linear,
    "aten.flatten.using_ints": _flatten, "aten.cat.default": _cat,
    "aten.select.int": _select, "aten.slice.Tensor": _slice,
    "aten.pow.Tensor_Scalar": _pow, "aten.neg.default": _neg, "aten.gelu.default": _gelu,
    "aten.softmax.int": _softmax, "aten._softmax.default": _softmax, "aten.mean.dim": _mean, "aten.amax.default": _mean,
    "aten.amin.default": _mean,
    "aten.sum.dim_IntList": _mean,
    "aten.transpose.int": _transpose, "aten.permute.default": _permute, "aten.unsqueeze.default": _unsqueeze,
    "aten.expand.default": _expand, "aten.squeeze.dim": _squeeze, "aten.squeeze.dims": _squeeze,
    "aten.view.default": _reshape, "aten.reshape.default": _reshape, "aten.unflatten.int": _reshape,
    "aten._unsafe_view.default": _reshape,
    "aten.split.Tensor": _split,
}

