"""Recognising what spans several ops or only has a value: static tables, rotary, attention.

Static nodes (functions of sizes and buffers) are recognised by their value at the example inputs: `arange`
along one axis, a causal mask (lower-triangular), a rotary table. A pattern is checked twice: by structure
(rotate-half's slice/neg/cat) and by recomputing it with the language's definition on the captured values.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from nnspec.importer.graph import L, annotation, unmerged

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter


@dataclass(eq=False)
class Static:
    """A value computed from sizes and buffers only, not (yet) written as a spec expression."""

    node: fx.Node
    value: Any


def static_value(lifter: Lifter, n: fx.Node) -> Any:
    v = lifter.cap.values.get(n.name)
    if isinstance(v, torch.Tensor) and not v.is_floating_point() and v.dtype != torch.bool and v.dim() >= 1:
        d = _arange_dim(v)
        if d is not None:
            # the other dims only broadcast it (`arange(T).expand(B, T)`): names do that at the use
            axes: list[tuple[str, ...]] = [() for _ in v.shape]
            name = lifter.dims.name(v.shape[d])
            axes[d] = (name,)
            return L(f"arange({name})", [], axes, [name], lifter.scope_of(n), lifter.index[n])
        if v.numel() and bool((v == v.flatten()[0]).all()) and all(s in lifter.dims.free for s in v.shape if s > 1):
            # a constant index table over free axes (token types defaulted to 0): `full(0, B, T, dtype="int64")`
            axes = [(lifter.dims.free[s],) if s > 1 else () for s in v.shape]
            names = [a[0] for a in axes if a]
            if len(set(names)) == len(names):
                return L(f"full({int(v.flatten()[0])}, {', '.join(names)}, dtype=\"{str(v.dtype)[6:]}\")", [], axes,
                         names, lifter.scope_of(n), lifter.index[n])
    from nnspec.importer.shift_mask import lift_shift_mask

    got = lift_shift_mask(lifter, n, v)           # Swin's shifted-window mask (`shift_mask.py`)
    return got if got is not None else Static(n, v)


def _arange_dim(v: torch.Tensor) -> int | None:
    """The dim along which `v` counts 0, 1, 2, ... (constant along every other dim), if any."""
    for d, size in enumerate(v.shape):
        if size < 2:
            continue
        shape = [1] * v.dim()
        shape[d] = size
        ref = torch.arange(size, dtype=v.dtype).reshape(shape).expand_as(v)
        if torch.equal(v, ref):
            return d
    return None


def is_causal(v: Any) -> bool:
    if not isinstance(v, torch.Tensor) or v.dim() < 2 or v.shape[-1] != v.shape[-2]:
        return False
    t = v.shape[-1]
    want = torch.ones(t, t, dtype=torch.bool).tril()
    m = v if v.dtype == torch.bool else v == 0
    return bool((m == want).all())


def match(lifter: Lifter, n: fx.Node) -> L | None:
    name = str(n.target)
    if name == "aten.add.Tensor":
        return _rotary(lifter, n)
    if name == "aten.scaled_dot_product_attention.default":
        return _sdpa(lifter, n)
    return None


def _op(lifter: Lifter, n: Any, name: str) -> fx.Node | None:
    n = lifter.resolve(n)
    return n if isinstance(n, fx.Node) and str(n.target) == name else None


def _rotary(lifter: Lifter, n: fx.Node) -> L | None:
    m1, m2 = (_op(lifter, a, "aten.mul.Tensor") for a in n.args[:2])
    if m1 is None or m2 is None:
        return None
    x, cos = (lifter.resolve(a) for a in m1.args)
    cat = _op(lifter, m2.args[0], "aten.cat.default")
    sin = lifter.resolve(m2.args[1])
    if cat is None or cos not in lifter.static or sin not in lifter.static or x in lifter.static:
        return None
    parts = cat.args[0]
    if len(parts) != 2 or _op(lifter, parts[0], "aten.neg.default") is None:
        return None
    if not (_half_of(lifter, lifter.resolve(parts[0]).args[0], x, 1) and _half_of(lifter, parts[1], x, 0)):
        return None
    xv, got = lifter.value(x), lifter.value(n)
    cv = lifter.value(cos).expand_as(xv)
    pos_dim = next((i for i in range(xv.dim() - 1) if cv.shape[i] > 1 and not torch.equal(
        cv.select(i, 0), cv.select(i, min(1, cv.shape[i] - 1)))), None)
    if pos_dim is None:
        raise lifter.fail(n, "a rotary table that does not vary along any position axis")
    d = xv.shape[-1]
    sv = lifter.value(sin).expand_as(xv)
    idx = [0] * (xv.dim() - 1)
    idx[pos_dim] = 1
    angle1 = torch.atan2(sv[tuple(idx)], cv[tuple(idx)])
    base = float(angle1[1]) ** (-d / 2) if d >= 4 else 10000.0
    base_txt = _base_name(lifter, base)
    base = _base_value(lifter, base)
    ref = _rotate(xv, pos_dim, base)
    if not torch.allclose(ref, got, atol=1e-4, rtol=1e-4):
        raise lifter.fail(n, "a rotary embedding other than the plain one (scaled or offset positions)")
    xl = lifter.lift(x)
    pos = xl.axes[pos_dim]
    dim = xl.axes[-1]
    if len(pos) != 1 or len(dim) != 1:
        raise lifter.fail(n, "rotary over a merged axis")
    return L(f"rotary({{0}}, pos={pos[0]}, dim={dim[0]}, base={base_txt})", [xl], xl.axes, xl.order,
             lifter.scope_of(n), lifter.index[n], hint=xl.hint)


def _half_of(lifter: Lifter, n: Any, x: fx.Node, which: int) -> bool:
    """`n` is the first (0) or second (1) half of `x`'s last dim: `x[..., :d/2]` / `x[..., d/2:]` as HF writes
    it, or `x.chunk(2, dim)[which]` as nnspec's generated rotary does (the value check decides the rest)."""
    s = _op(lifter, n, "aten.slice.Tensor")
    if s is not None:
        return lifter.resolve(s.args[0]) is x
    r = lifter.resolve(n)
    if not (isinstance(r, fx.Node) and r.target is operator.getitem and r.args[1] == which):
        return False
    chunk = _op(lifter, r.args[0], "aten.chunk.default")
    return chunk is not None and chunk.args[1] == 2 and lifter.resolve(chunk.args[0]) is x


def _rotate(x: torch.Tensor, pos_dim: int, base: float) -> torch.Tensor:
    d = x.shape[-1]
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    t = torch.arange(x.shape[pos_dim], dtype=torch.float32)
    freqs = torch.outer(t, inv)
    emb = torch.cat([freqs, freqs], -1)
    shape = [1] * x.dim()
    shape[pos_dim] = x.shape[pos_dim]
    shape[-1] = d
    cos, sin = emb.cos().reshape(shape), emb.sin().reshape(shape)
    rot = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + rot * sin


def _config_theta(lifter: Lifter) -> tuple[str, float] | None:
    cfg = lifter.cap.config
    rp = cfg.get("rope_parameters") or {}
    if isinstance(rp, dict) and isinstance(rp.get("rope_theta"), (int, float)):
        return "rope_theta", float(rp["rope_theta"])
    if isinstance(cfg.get("rope_theta"), (int, float)):
        return "rope_theta", float(cfg["rope_theta"])
    return None


def _base_value(lifter: Lifter, base: float) -> float:
    got = _config_theta(lifter)
    return got[1] if got and abs(got[1] - base) <= 1e-2 * got[1] else float(round(base))


def _base_name(lifter: Lifter, base: float) -> str:
    got = _config_theta(lifter)
    if got and abs(got[1] - base) <= 1e-2 * got[1]:
        lifter.rope_theta = got[1]
        return got[0]
    return repr(float(round(base)))


def _peel_repeat_kv(lifter: Lifter, n: Any) -> tuple[fx.Node, int]:
    """`repeat_kv`: reshape(expand(unsqueeze(k, 2), [B, kv, g, S, d]), [B, kv*g, S, d]) -> (k, g)."""
    r = lifter.resolve(n)
    if isinstance(r, fx.Node) and str(r.target) in ("aten.reshape.default", "aten.view.default",
                                                     "aten._unsafe_view.default"):
        e = _op(lifter, r.args[0], "aten.expand.default")
        u = _op(lifter, e.args[0], "aten.unsqueeze.default") if e is not None else None
        if u is not None and u.args[1] == 2:
            return lifter.resolve(u.args[0]), int(e.args[1][2])
    return r, 1


def relabel(lifter: Lifter, x: L, old: str, new: str, scope: str, idx: float) -> L:
    lifter.dims.aliases.setdefault(new, old)
    items = [new if a == old else a for a in x.order]
    if not x.atom:
        x.bind = True
    axes = unmerged([tuple(new if a == old else a for a in g) for g in x.axes])
    order = [p for a in items for p in a.split("*")]
    return L("{0}" + annotation(list(items)), [x], axes, order, scope, idx, hint=x.hint)


def _sdpa(lifter: Lifter, n: fx.Node) -> L:
    args = list(n.args) + [None] * (6 - len(n.args))
    q_node, k_node, v_node, mask_node = args[0], args[1], args[2], args[3] if len(n.args) > 3 else n.kwargs.get(
        "attn_mask")
    causal = bool(args[5] if len(n.args) > 5 else n.kwargs.get("is_causal", False))
    k0, g = _peel_repeat_kv(lifter, k_node)
    v0, gv = _peel_repeat_kv(lifter, v_node)
    scope, idx = lifter.scope_of(n), lifter.index[n]
    q, k, v = lifter.lift(q_node), lifter.lift(k0), lifter.lift(v0)
    if mask_node is not None:
        mv = lifter.value(mask_node)
        if lifter.resolve(mask_node) in lifter.static and is_causal(mv):
            causal = True
        elif not (isinstance(mv, torch.Tensor) and mv.dtype == torch.bool and bool(mv.all())):
            raise lifter.fail(n, "an attention mask that is not causal")
    query, key_ax, dim = q.axes[-2], k.axes[-2], q.axes[-1]
    if len(query) != 1 or len(dim) != 1 or len(key_ax) != 1:
        raise lifter.fail(n, "attention over merged axes")
    hd = lifter.value(q_node).shape[-1]
    scale = n.kwargs.get("scale")
    extra = "" if scale is None or math.isclose(scale, 1 / math.sqrt(hd), rel_tol=1e-6) else f", scale={scale!r}"
    k = relabel(lifter, k, key_ax[0], "S", scope, idx - 0.3)
    v = relabel(lifter, v, v.axes[-2][0], "S", scope, idx - 0.2)
    for node, hint in ((q, "q"), (k, "k"), (v, "v")):
        node.hint, node.bind = hint, True
    if g != gv:
        raise lifter.fail(n, "keys and values repeated differently")
    if g > 1:
        hq, hk = q.axes[1], k.axes[1]
        if len(hq) != 1 or len(hk) != 1:
            raise lifter.fail(n, "grouped-query attention over merged head axes")
        gname = "groups" if lifter.dims.values.get("groups") == g else lifter.dims.name(g)
        items = [(hk[0], gname) if a == hq[0] else a for a in q.order]
        if not q.atom:
            q.bind = True
        axes = [(hk[0], gname) if grp == hq else grp for grp in q.axes]
        order = [p for a in q.order for p in ((hk[0], gname) if a == hq[0] else (a,))]
        q = L("{0}" + annotation(items), [q], axes, order, scope, idx - 0.1, hint="q", bind=True)
    c = ", causal=true" if causal else ""
    return L(f"attention({{0}}, {{1}}, {{2}}, key=S, dim={dim[0]}, query={query[0]}{c}{extra})", [q, k, v],
             q.axes, q.order, scope, idx, hint="o")
