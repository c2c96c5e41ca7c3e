"""Sparse mixture-of-experts modules as the language's `moe`: their routing (top-k, sort, grouped matmuls,
index_add) is data-dependent code nothing else in the importer lifts, so the routed part is recognised as a whole.

Two shapes of Hugging Face module are recognised (transformers 5 layout: a router `gate.weight [E, H]`, fused
`experts.gate_up_proj [E, 2I, H]` and `experts.down_proj [E, H, I]`):
- Mixtral's `*SparseMoeBlock` with only `gate` and `experts` children: the whole block is one `moe` call;
- a block with more than that (Qwen2-MoE's shared expert and its gate): only its `experts` child is the `moe` call,
  reading the router from its sibling `gate`; the rest of the block (shared expert, sigmoid gate, sum) is lifted
  as ordinary code around it.
Either way the call is checked against the dense gated sum the language defines (softmax over the experts, top-k
kept, renormalised or not: whichever the module computed), so a router that differs (Qwen3-Next's sigmoid, an
expert bias) is refused rather than mis-lifted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import fx

from nnspec.importer.graph import L
from nnspec.importer.leaves import _check, _inputs, _merge_last
from nnspec.importer.routing import Routed

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter


def _region(lifter: Lifter, path: str) -> list[fx.Node]:
    return [n for n in lifter.graph.nodes if path in lifter.stack(n)]


def lift_moe(lifter: Lifter, path: str, n: fx.Node, r: Routed) -> L:
    """`moe(x, E, I, k[, norm_topk_prob=false], name=...)` for the routed MoE at `path`, whose output `n` is."""
    router_mod, experts = lifter.modules[r.router], lifter.modules[r.experts]
    region = _region(lifter, path)
    region += [m for m in _region(lifter, r.router) if m not in set(region)]
    ins = _inputs(lifter, region)        # the tokens: what flows into the router and experts from outside
    if len(ins) != 1:
        raise lifter.fail(n, f"a mixture of experts taking {len(ins)} tensors")
    x_node = ins[0]
    x, xv, yv = lifter.lift(x_node), lifter.value(x_node), lifter.value(n)
    if not isinstance(x, L) or not isinstance(yv, torch.Tensor) or yv.shape != xv.shape:
        raise lifter.fail(n, "a mixture of experts whose output is not one value per token and feature")
    router, gate_up, down = router_mod.weight, experts.gate_up_proj, experts.down_proj
    e, inner = gate_up.shape[0], gate_up.shape[1] // 2
    k = int(getattr(router_mod, "top_k", 0) or getattr(lifter.modules[path], "top_k", 0) or 0)
    if not k:
        raise lifter.fail(n, "a router without top_k")
    with torch.no_grad():
        refs = {norm: _dense_moe(xv, router, gate_up, down, k, norm).reshape(yv.shape) for norm in (True, False)}
    norm = next((nm for nm, ref in refs.items() if _close(ref, yv)), True)
    _check(lifter, n, refs[norm], yv)
    lifter.moe[path] = r
    return _moe_call(lifter, n, x, path, e, inner, k, norm)


def _moe_call(lifter: Lifter, n: fx.Node, x: L, path: str, e: int, inner: int, k: int, norm: bool) -> L:
    x = _merge_last(lifter, x, n)
    d = lifter.dims
    kname = next((key for key, v in d.values.items() if "per_tok" in key and v == k), str(k))
    ename = next((key for key, v in d.values.items() if "experts" in key and "per_tok" not in key and v == e), str(e))
    lifter.leaf_calls.append((path, "moe"))
    extra = "" if norm else ", norm_topk_prob=false"
    name = path.rsplit(".", 1)[-1]
    return L(f"moe({{0}}, {ename}, {d.expr(inner)}, {kname}{extra}, name={name})", [x], x.axes, x.order,
             lifter.scope_of(n), lifter.index[n], hint=name)


_CALL_PARAMS = ("router", "gate_proj", "up_proj", "down_proj")


def lift_moe_call(lifter: Lifter, n: fx.Node) -> L:
    """nnspec's own generated `moe_swiglu(x, router, gate_proj, up_proj, down_proj, k, norm_topk_prob)`, captured
    as one call (`helpers.py`): `moe(x, E, I, k[, norm_topk_prob=false], name=owner)`. Its parameters are the
    `moe` call's own (`owner.router`, ...), so the weights map one to one; the call's value is checked against
    the dense gated sum with the call's own `k` and `norm_topk_prob`."""
    x_node, *weights = n.args[:5]
    k, norm = int(n.args[5]), bool(n.args[6])
    keys = [lifter.param_path(w) for w in weights]
    owners = {key.rpartition(".")[0] for key in keys if key}
    attrs = tuple(key.rpartition(".")[2] for key in keys if key)
    if len(owners) != 1 or attrs != _CALL_PARAMS:
        raise lifter.fail(n, "a mixture of experts whose weights are not one module's router, gate_proj, up_proj "
                             "and down_proj")
    path = owners.pop()
    scope, parent = lifter.scope_of(n), path.rpartition(".")[0]
    if parent != scope and not (not scope and parent in lifter.flattened):
        raise lifter.fail(n, f"a mixture of experts whose weights ({path}) are not a child of its block")
    x, xv, yv = lifter.lift(x_node), lifter.value(x_node), lifter.value(n)
    router, gate, up, down = (lifter.value(w) for w in weights)
    if not isinstance(x, L) or not isinstance(yv, torch.Tensor) or yv.shape != xv.shape:
        raise lifter.fail(n, "a mixture of experts whose output is not one value per token and feature")
    with torch.no_grad():
        ref = _dense_moe(xv, router, torch.cat([gate, up], 1), down, k, norm).reshape(yv.shape)
    _check(lifter, n, ref.to(yv.dtype), yv)
    return _moe_call(lifter, n, x, path, router.shape[0], gate.shape[1], k, norm)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-4, rtol=1e-4)


def _dense_moe(xv: torch.Tensor, router: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, k: int,
               norm: bool) -> torch.Tensor:
    """Every expert on every token, weighted by the top-k of the router's softmax (zero elsewhere)."""
    inner = gate_up.shape[1] // 2
    h = xv.reshape(-1, xv.shape[-1]).float()
    probs = torch.softmax(h @ router.t(), -1)
    top, idx = probs.topk(k, -1)
    if norm:
        top = top / top.sum(-1, keepdim=True)
    weights = torch.zeros_like(probs).scatter(-1, idx, top)
    g, u = gate_up[:, :inner], gate_up[:, inner:]
    outs = torch.stack([(F.silu(h @ g[j].t()) * (h @ u[j].t())) @ down[j].t() for j in range(gate_up.shape[0])], 1)
    return (outs * weights.unsqueeze(-1)).sum(1)


def weight_rules(r: Routed, spec_path: str, pattern) -> dict[str, str]:
    """The `moe` call's parameters (`router`, `gate_proj`, `up_proj` as halves of the fused `gate_up_proj`,
    `down_proj`) -> checkpoint keys; `pattern` writes a module list's index as `{i}`."""
    router, experts = pattern(r.router + ".weight"), pattern(r.experts + ".gate_up_proj")[:-len(".gate_up_proj")]
    return {f"{spec_path}.router": router,
            f"{spec_path}.gate_proj": f"{experts}.gate_up_proj | split(1, 2, 0)",
            f"{spec_path}.up_proj": f"{experts}.gate_up_proj | split(1, 2, 1)",
            f"{spec_path}.down_proj": f"{experts}.down_proj"}


def weight_keys(r: Routed) -> set[str]:
    """The checkpoint keys the `moe` call's mapping covers (so no other rule is written for them)."""
    return {r.router + ".weight", r.experts + ".gate_up_proj", r.experts + ".down_proj"}
