"""The small specs in examples/small/ say what their papers say.

Each is checked and interpreted on random inputs, its parameter count equals the interpreted module's, and its
output equals a reference written here independently, in a different form from the spec where the paper has one
(sparse routing for the dense MoE, the parallel form of retention, explicit loops over windows and neighbours).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

import nnspec

torch = pytest.importorskip("torch")
F = torch.nn.functional

from nnspec.backends.torch import Interpreter  # noqa: E402

SMALL = Path(__file__).parent.parent / "examples" / "small"


def build(name: str, **dims: Any) -> tuple[nnspec.CheckResult, Interpreter, dict[str, Any]]:
    result = nnspec.check(SMALL / f"{name}.yaml", **dims)
    interp = Interpreter(result.model, seed=3).eval()
    params = interp.named_spec_parameters()
    assert result.params == sum(p.numel() for p in params.values())
    return result, interp, {k: v.detach() for k, v in params.items()}


def lin(x: Any, params: dict[str, Any], name: str) -> Any:
    return F.linear(x, params[f"{name}.weight"], params.get(f"{name}.bias"))


def test_moe_dense_spec_equals_sparse_routing() -> None:
    _, interp, p = build("moe")
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        ours = interp(x=x)["y"]
    expected = torch.zeros_like(x)
    for b in range(2):
        for t in range(5):
            logits = x[b, t] @ p["router.weight"].T
            top, idx = torch.topk(logits, 2)
            weights = torch.softmax(top, dim=0)
            for w, e in zip(weights, idx, strict=True):
                h = F.silu(p["w1"][e] @ x[b, t])           # w1: [expert, d_ff, d]
                expected[b, t] += w * (p["w2"][e] @ h)     # w2: [expert, d, d_ff]
    torch.testing.assert_close(ours, expected)


def test_retention_scan_equals_parallel_form() -> None:
    _, interp, p = build("retention")
    B, T, d, heads, gamma = 2, 7, 16, 2, 0.9
    x = torch.randn(B, T, d)
    with torch.no_grad():
        ours = interp(x=x)["y"]
    q = lin(x, p, "q").view(B, T, heads, -1).transpose(1, 2)
    k = lin(x, p, "k").view(B, T, heads, -1).transpose(1, 2)
    v = lin(x, p, "v").view(B, T, heads, -1).transpose(1, 2)
    n = torch.arange(T)
    decay = torch.where(n[:, None] >= n[None, :], gamma ** (n[:, None] - n[None, :]).float(), torch.zeros(()))
    o = ((q @ k.transpose(-1, -2)) * decay) @ v          # RetNet eq. (5), parallel form
    torch.testing.assert_close(ours, lin(o.transpose(1, 2).reshape(B, T, d), p, "out"))


def test_window_attention_equals_per_window_loop() -> None:
    _, interp, p = build("window_attention")
    B, H, W, C, heads, ws = 2, 8, 12, 32, 4, 4
    x = torch.randn(B, H, W, C)
    with torch.no_grad():
        ours = interp(x=x)["y"]
    expected = torch.empty_like(x)
    bias = p["relative_position_bias"]                   # [heads, L, L]
    for b in range(B):
        for i in range(0, H, ws):
            for j in range(0, W, ws):
                t = x[b, i:i + ws, j:j + ws].reshape(ws * ws, C)
                q, k, v = (lin(t, p, n).view(ws * ws, heads, -1).transpose(0, 1) for n in "qkv")
                s = q @ k.transpose(-1, -2) / math.sqrt(C // heads) + bias
                o = (torch.softmax(s, -1) @ v).transpose(0, 1).reshape(ws * ws, C)
                expected[b, i:i + ws, j:j + ws] = lin(o, p, "proj").view(ws, ws, C)
    torch.testing.assert_close(ours, expected)


def test_window_attention_refuses_a_grid_that_does_not_tile() -> None:
    _, interp, _ = build("window_attention")
    with pytest.raises(ValueError, match="H % window == 0"):
        interp(x=torch.randn(1, 6, 8, 32))


def test_graph_attention_only_reads_neighbours() -> None:
    _, interp, p = build("graph_transformer")
    B, N = 2, 5
    torch.manual_seed(0)
    x, lap = torch.randn(B, N, 16), torch.randn(B, N, 6)
    edges = torch.randn(B, N, N, 4)
    adj = (torch.rand(B, N, N) < 0.5) | torch.eye(N, dtype=torch.bool)
    with torch.no_grad():
        ours = interp(x=x, adj=adj, edges=edges, lap_pe=lap)["y"]
    h = lin(x, p, "embed") + lin(lap, p, "pe")
    att = torch.zeros(B, N, 32)
    heads, hd = 4, 8
    for b in range(B):
        for i in range(N):
            nbrs = adj[b, i].nonzero().flatten()
            q = lin(h[b, i], p, "attn.q").view(heads, hd)
            k = lin(h[b, nbrs], p, "attn.k").view(-1, heads, hd)
            v = lin(h[b, nbrs], p, "attn.v").view(-1, heads, hd)
            e = lin(edges[b, i, nbrs], p, "attn.edge")        # [neighbours, heads]
            s = torch.einsum("hd,nhd->hn", q, k) / math.sqrt(hd) * e.T
            att[b, i] = torch.einsum("hn,nhd->hd", torch.softmax(s, -1), v).reshape(-1)
    def bn(t: Any, name: str) -> Any:  # eval mode: the initial running statistics (mean 0, variance 1)
        return (t / math.sqrt(1 + 1e-5)) * p[f"{name}.weight"] + p[f"{name}.bias"]

    h1 = bn(h + lin(att, p, "attn.o"), "bn1")
    y = bn(h1 + lin(F.relu(lin(h1, p, "ffn1")), p, "ffn2"), "bn2")
    torch.testing.assert_close(ours, y)
    # BatchNorm keeps running statistics while training
    interp.train()
    interp(x=x, adj=adj, edges=edges, lap_pe=lap)
    assert int(interp.root.get_buffer("bn1.num_batches_tracked")) == 1
    assert not torch.equal(interp.root.get_buffer("bn1.running_mean"), torch.zeros(32))


def test_shared_recursion_has_one_layer_of_weights() -> None:
    result, interp, p = build("recursive")
    d = 32
    layer = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    assert result.params == layer + 2 * d                 # one layer, applied 6 times, plus the final norm
    assert all(not k.startswith("shared.1.") for k in p)
    with torch.no_grad():                                 # norms start at 1 and 0: make every weight tell
        for v in interp.named_spec_parameters().values():
            v.add_(0.1 * torch.randn_like(v))
    p = {k: v.detach() for k, v in interp.named_spec_parameters().items()}
    x = torch.randn(2, 5, d)
    with torch.no_grad():
        y = interp(x=x)["y"]

    def ln(t: Any, name: str) -> Any:
        return F.layer_norm(t, (d,), p[f"{name}.weight"], p[f"{name}.bias"], eps=1e-5)

    h = x
    for _ in range(6):   # the same weights at every depth; causal (the spec passes causal=true)
        q, k, v = lin(ln(h, "shared.ln_1"), p, "shared.attn.qkv").view(2, 5, 3, 4, 8).unbind(2)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        h = h + lin(o.transpose(1, 2).reshape(2, 5, d), p, "shared.attn.proj")
        h = h + lin(F.gelu(lin(ln(h, "shared.ln_2"), p, "shared.mlp.fc")), p, "shared.mlp.proj")
    torch.testing.assert_close(y, ln(h, "ln_f"))


def test_window_guards_are_stated_once() -> None:
    """The tiling splits H by wh and the spec requires H % window == 0; wh is window, so that is one guard."""
    result, _, _ = build("window_attention")
    assert [g.text for g in result.model.guards] == ["H % window == 0", "W % window == 0"]
