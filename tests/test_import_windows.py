"""`nnspec import` of models whose axes align by position: a grid cut into windows (two axes split in one view, a
free axis split into a count and a configured window), a learned bias table added to windowed scores by position,
and a graph's two node axes of one size (`adj[B, T, S]`, `require: S == T`).

Round trips (spec -> generated module -> import -> spec) compare the imported spec, loaded with the first model's
state dict through its own mapping, against the first model at other sizes than the traced ones; the plain-PyTorch
module is its own reference. Near misses show a clean refusal naming the aten op and the module path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import nnspec
from nnspec.importer import ImportFailure, import_module
from nnspec.importer.windows import _plan

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_import_round_trip import _assert_equal_models, _config_and_free  # noqa: E402


def test_plan_follows_each_dim_to_the_axes_it_holds() -> None:
    # window partition [B, H, W, C] -> [B, H/4, 4, W/4, 4, C] (hand-derived): H and W each split in two
    atoms = [("B", 3), ("H", 12), ("W", 20), ("C", 32)]
    assert _plan(atoms, [3, 3, 4, 5, 4, 32]) == [("group", ("B",)), ("piece", ("H", 0)), ("piece", ("H", 1)),
                                                 ("piece", ("W", 0)), ("piece", ("W", 1)), ("group", ("C",))]
    # window reverse merges whole axes back; a size-1 dim holds none
    atoms = [("B", 3), ("nh", 3), ("wh", 4), ("nw", 5), ("ww", 4), ("C", 32)]
    assert _plan(atoms, [3, 12, 1, 20, 32]) == [("group", ("B",)), ("group", ("nh", "wh")), ("one", ()),
                                               ("group", ("nw", "ww")), ("group", ("C",))]
    # a target dim cutting across two axes (8 = 4 of H's 12 times 2 of W's) has no provenance
    assert _plan([("H", 12), ("W", 2)], [3, 8]) is None
    assert _plan([("H", 12)], [5, 2]) is None


def test_round_trip_of_the_window_attention_example() -> None:
    """The grid's rows and columns are free (`x[B, H, W, C]`), split into windows `(nh wh)`, `(nw ww)` in one view;
    the learned bias `param(heads, L, L)` meets the windowed scores by position and is relabelled to their axes."""
    path = str(ROOT / "examples/small/window_attention.yaml")
    config, _ = _config_and_free(path)
    torch.manual_seed(0)
    first = nnspec.build(path).eval()
    imp = import_module(first, {"x": torch.randn(3, 12, 20, 32)}, config, name="windows")
    text = imp.text
    assert "x[B, (nh wh), (nw ww), C]" in text and "x: float32[B, H, W, C]" in text
    assert "relative_position_bias[heads, (wh ww), (S ww_k)]" in text and "aten" not in text
    torch.manual_seed(1)
    _assert_equal_models(first, text, {"x": torch.randn(2, 8, 24, 32)})


class _Windows(nn.Module):
    """Plain PyTorch window attention (Swin's partition and reverse with view + permute, a learned per-head bias
    table [heads, N, N] added by position), written independently of nnspec's generated code."""

    def __init__(self, dim: int = 16, heads: int = 2, win: int = 4) -> None:
        super().__init__()
        self.heads, self.win = heads, win
        self.qkv = nn.Linear(dim, 3 * dim)
        self.bias = nn.Parameter(torch.randn(heads, win * win, win * win))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        n, k = self.win, self.heads
        t = x.view(b, h // n, n, w // n, n, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h // n, w // n, n * n, c)
        qkv = self.qkv(t).reshape(b, h // n, w // n, n * n, 3, k, c // k).permute(4, 0, 1, 2, 5, 3, 6)
        q, key, v = qkv[0], qkv[1], qkv[2]
        s = q @ key.transpose(-2, -1) / (c // k) ** 0.5 + self.bias
        o = (s.softmax(-1) @ v).transpose(3, 4).reshape(b, h // n, w // n, n * n, c)
        return self.proj(o).view(b, h // n, w // n, n, n, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def test_a_plain_pytorch_window_attention() -> None:
    torch.manual_seed(0)
    model = _Windows().eval()
    imp = import_module(model, {"x": torch.randn(5, 12, 20, 16)}, {"dim": 16, "heads": 2, "window": 4},
                        name="windows")
    assert "wh: window" in imp.text and "ww: window" in imp.text         # declared: two axes of the window's size
    assert "[B, (nh wh), (nw ww), dim]" in imp.text and "aten" not in imp.text
    _assert_equal_models(model, imp.text, {"x": torch.randn(3, 8, 16, 16)})


class _CutAcross(nn.Module):
    """A view whose dim mixes rows of two windows (12 rows of 20 as [3, 80]): no named axes hold it."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        return self.proj(x.reshape(b, 3, h * w // 3, c)).reshape(b, h, w, c)


def test_a_view_cutting_across_axes_is_refused() -> None:
    with pytest.raises(ImportFailure, match=r"^aten\.(view|reshape)\.default in module '<root>': a reshape"):
        import_module(_CutAcross().eval(), {"x": torch.randn(5, 12, 20, 16)}, {"dim": 16, "heads": 2, "window": 4})


class _Swapped(nn.Module):
    """A [heads, T, T]-like bias whose dims torch aligns with the scores' (S, T) in swapped order: a relabel to the
    same names would read as a rearrange, so the import refuses rather than transposing silently."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.k = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.q(x) @ self.k(x).transpose(-2, -1)          # [B, T, S]
        return s + s.transpose(-2, -1)                       # [B, S, T] added by position: names T, S swapped


def test_a_positional_swap_is_refused() -> None:
    with pytest.raises(ImportFailure, match=r"^aten\.add\.Tensor in module '<root>': operands align axes"):
        import_module(_Swapped().eval(), {"x": torch.randn(3, 5, 8)}, {"hidden": 8})


def _graph_inputs(b: int, n: int) -> dict[str, torch.Tensor]:
    adj = (torch.rand(b, n, n) > 0.4) | torch.eye(n, dtype=torch.bool)     # self-loops: no empty row
    return {"x": torch.randn(b, n, 16), "adj": adj, "edges": torch.randn(b, n, n, 4), "lap_pe": torch.randn(b, n, 6)}


def test_round_trip_of_the_graph_transformer_example() -> None:
    """Nodes and neighbours have one size (`require: K == N`): the inputs' second node axis is a free dim of its own,
    `S`, required equal to `T`; BatchNorm1d is `batchnorm(..., over=hidden)` with its running statistics loaded."""
    path = str(ROOT / "examples/small/graph_transformer.yaml")
    config, _ = _config_and_free(path)
    torch.manual_seed(0)
    first = nnspec.build(path).eval()
    for name, buf in first.named_buffers():          # statistics as after training, so that loading them matters
        if name.endswith("running_mean"):
            buf.normal_()
        elif name.endswith("running_var"):
            buf.uniform_(0.5, 2.0)
    imp = import_module(first, _graph_inputs(5, 7), config, name="graph")
    text = imp.text
    assert "adj: bool[B, T, S]" in text and "- S == T" in text and "batchnorm(" in text
    assert "[B, T, (heads head_dim)]" in text and "aten" not in text
    _assert_equal_models(first, text, _graph_inputs(2, 9))


class _Reduce(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 2, stride=2)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return self.conv(p.permute(0, 3, 1, 2)).flatten(2).mean(-1)            # [B, 8]: the 4 x 6 grid pooled


class _Grids(nn.Module):
    """Plain PyTorch, channels-last between convolutions (PVT-v2's pattern): a patch convolution, a strided
    reduction of its grid (a second grid of other sizes, pooled), and a depthwise 3x3 that keeps the grid."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.reduce = _Reduce()        # a block: the language names a kernel's axes after the grid it slides on
        self.up = nn.Linear(8, 24)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.down = nn.Linear(24, 8)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        p = self.patch(pixel_values).permute(0, 2, 3, 1)                                  # [B, 8, 12, 8]
        r = self.reduce(p)
        h = self.dw(self.up(p).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)         # [B, 8, 12, 24]
        return self.down(torch.nn.functional.gelu(h)) + r[:, None, None, :]


def test_convolution_grids_are_named_apart() -> None:
    """The reduced grid is `(gh_1, gw_1)` beside the patch grid `(gh, gw)`; the depthwise convolution writes
    `groups=` and keeps its input's axes (`into=(gh, gw)`); its width `3*hidden` is renamed before a rearrange."""
    torch.manual_seed(0)
    model = _Grids().eval()
    config = {"num_channels": 3, "hidden": 8, "height": 32, "width": 48}
    imp = import_module(model, {"pixel_values": torch.randn(5, 3, 32, 48)}, config, name="grids")
    text = imp.text
    assert "into=(gh_1, gw_1)" in text and "groups=3 * hidden" in text and "into=(gh, gw), name=dw" in text
    _assert_equal_models(model, text, {"pixel_values": torch.randn(2, 3, 32, 48)})


@pytest.mark.slow
def test_round_trip_of_the_pvt_v2_example() -> None:
    """Four stages of overlapping patch convolutions, spatial-reduction attention (a strided convolution's grid as
    the keys) and Mix-FFN (a depthwise convolution between linears), each stage's layers a `repeat`."""
    dims = dict(image_height=64, image_width=96, hidden_size0=8, hidden_size1=16, hidden_size2=24, hidden_size3=40,
                heads0=2, heads1=2, heads2=3, heads3=5, depth0=1, depth1=1, depth2=1, depth3=1)
    path = str(ROOT / "examples/pvt_v2.yaml")
    config, free = _config_and_free(path, **dims)
    torch.manual_seed(0)
    first = nnspec.build(path, **dims).eval()
    imp = import_module(first, {"pixel_values": torch.randn(free["B"], 3, 64, 96)}, config, name="pvt")
    assert imp.text.count("repeat(1, ") == 4 and "groups=" in imp.text and "aten" not in imp.text
    _assert_equal_models(first, imp.text, {"pixel_values": torch.randn(2, 3, 64, 96)})


# PVT-v2 at a square image round-trips in tests/test_import_pvt_graph.py (grids named by provenance)
