"""`nnspec import` of Swin's pieces (issue 23): the relative position index looked up in a learned bias table, the
cyclic shift of the windows (`torch.roll`, or the `cat` of an axis's tail and head that nnspec generates), the
shifted-window attention mask, a fixed grid cut into windows.

The constant tables are recognised by value against tables computed in nnspec/importer (relative_bias.py,
shift_mask.py); those are checked here against Hugging Face's own construction (`SwinRelativePositionBias`,
`SwinLayer.get_attn_mask`), an independent source. The lifts are checked by round trips of plain-PyTorch modules
(their own reference) at other batch sizes than the traced one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import nnspec
from nnspec.importer import ImportFailure, import_module
from nnspec.importer.relative_bias import relative_index
from nnspec.importer.shift_mask import shift_mask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_import_round_trip import _assert_equal_models, _config_and_free

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("win", [2, 4, 7])
def test_relative_index_is_hugging_faces(win: int) -> None:
    from transformers.models.swin.modeling_swin import SwinRelativePositionBias

    hf = SwinRelativePositionBias(2, (win, win))
    assert torch.equal(relative_index(win).reshape(-1), hf.relative_position_index)


@pytest.mark.parametrize(("grid", "win", "shift"), [(8, 4, 2), (12, 4, 2), (14, 7, 3), (6, 3, 1)])
def test_shift_mask_is_hugging_faces(grid: int, win: int, shift: int) -> None:
    from transformers.models.swin.modeling_swin import SwinLayer

    config = transformers.SwinConfig(embed_dim=8, window_size=win)
    layer = SwinLayer(config, 8, (grid, grid), 2, shift_size=shift)
    want = layer.get_attn_mask(grid, grid, torch.float32, torch.device("cpu"))       # [windows, N, N]
    got = shift_mask(grid // win, grid // win, win, shift).reshape(-1, win * win, win * win)
    assert torch.equal(got, want)


class _Bias(nn.Module):
    """Window attention scores with Swin's relative position bias, looked up by an `nn.Embedding` from the index
    table computed in forward (as nnspec's generated code does)."""

    def __init__(self, dim: int = 12, heads: int = 3, win: int = 4) -> None:
        super().__init__()
        self.win, self.heads = win, heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.relative_position_bias = nn.Embedding((2 * win - 1) ** 2, heads)

    def forward(self, t: torch.Tensor) -> torch.Tensor:          # t: [B, N, dim], N = win * win tokens
        b, n, c = t.shape
        q = self.q(t).view(b, n, self.heads, c // self.heads).transpose(1, 2)
        k = self.k(t).view(b, n, self.heads, c // self.heads).transpose(1, 2)
        pos = torch.arange(n, device=t.device)
        w = self.win
        offset = ((pos // w)[:, None] - pos // w + w - 1) * (2 * w - 1) + (pos % w)[:, None] - pos % w + w - 1
        s = q @ k.transpose(-2, -1) + self.relative_position_bias(offset).permute(2, 0, 1)
        return s.softmax(-1).sum(1)


def test_a_relative_position_bias_round_trips() -> None:
    """The index table is written as the language builds it (`offset[N, M] = ...`) with `N`, `M` declared as
    `window_size * window_size`, and looked up by `embedding`."""
    torch.manual_seed(0)
    model = _Bias().eval()
    with torch.no_grad():
        model.relative_position_bias.weight.normal_()
    imp = import_module(model, {"t": torch.randn(5, 16, 12)}, {"hidden_size": 12, "num_heads": 3, "window_size": 4},
                        name="bias")
    text = imp.text
    assert "N: window_size * window_size" in text and "arange(N) // window_size - arange(M) // window_size" in text
    assert "embedding(offset, (2 * window_size - 1) * (2 * window_size - 1)" in text and "aten" not in text
    _assert_equal_models(model, text, {"t": torch.randn(2, 16, 12)})


class _NotRelative(_Bias):
    def forward(self, t: torch.Tensor) -> torch.Tensor:
        n = t.shape[1]
        pos = torch.arange(n, device=t.device)
        offset = ((pos[:, None] + pos) * 7) % 49                   # a constant index table of another kind
        return self.q(t).sum(-1)[:, :, None] + self.relative_position_bias(offset).sum(-1)


def test_another_constant_index_table_is_refused() -> None:
    with pytest.raises(ImportFailure, match=r"a constant table fed to Embedding that is not arange"):
        import_module(_NotRelative().eval(), {"t": torch.randn(5, 16, 12)},
                      {"hidden_size": 12, "num_heads": 3, "window_size": 4})


class _Shifted(nn.Module):
    """Plain PyTorch: a fixed channels-last grid shifted by half a window along rows and columns (`torch.roll`, as
    Hugging Face's Swin does), mixed, and shifted back."""

    def __init__(self, dim: int = 12, shift: int = 2) -> None:
        super().__init__()
        self.shift = shift
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:               # x: [B, height, width, dim]
        s = self.shift
        h = torch.roll(self.proj(x), shifts=(-s, -s), dims=(1, 2))
        return torch.roll(torch.tanh(h), shifts=(s, s), dims=(1, 2)) + x


def test_a_roll_round_trips() -> None:
    """Each shift is two slices joined in the other order (`concat(slice(...), slice(...), over=(Ht, Hh), into=H)`),
    the bound `window_size // 2` where it is half the window."""
    torch.manual_seed(0)
    model = _Shifted().eval()
    config = {"hidden_size": 12, "height": 8, "width": 10, "window_size": 4}
    imp = import_module(model, {"x": torch.randn(5, 8, 10, 12)}, config, name="shifted")
    text = imp.text
    assert "start=window_size // 2" in text and "over=(heightt, heighth), into=height)" in text, text
    assert "aten" not in text
    _assert_equal_models(model, text, {"x": torch.randn(3, 8, 10, 12)})


class _RolledFree(_Shifted):
    def forward(self, x: torch.Tensor) -> torch.Tensor:               # x: [B, T, dim]: T is free
        return torch.roll(self.proj(x), shifts=-2, dims=1)


def test_a_roll_along_a_free_axis_is_refused() -> None:
    with pytest.raises(ImportFailure, match=r"^aten\.roll\.default in module '<root>': a cyclic shift along axis T"):
        import_module(_RolledFree().eval(), {"x": torch.randn(5, 7, 12)}, {"hidden_size": 12})


# small Swin: grids 32, 16, 8, 4 (the last stage one window wide, unshifted), window 4 shifted by 2; widths 16 to
# 128, MLP 3x (a width no grid size has), 2 and 4 heads
_SWIN = dict(image_size=64, patch_size=2, window_size=4, embed_dim=16, heads0=2, heads1=2, heads2=4, heads3=4,
             depth0=2, depth1=2, depth2=2, depth3=2, mlp_ratio=3.0)


def _swin_round_trip(dims: dict[str, float], image: int, batch: int) -> str:
    path = str(Path(__file__).resolve().parent.parent / "examples" / "swin.yaml")
    config, free = _config_and_free(path, **dims)
    torch.manual_seed(0)
    first = nnspec.build(path, **dims).eval()
    with torch.no_grad():                        # bias tables away from their init, so that the lookup matters
        for name, p in first.named_parameters():
            if name.endswith("relative_position_bias.weight"):
                p.normal_()
    imp = import_module(first, {"pixel_values": torch.randn(free["B"], 3, image, image)}, config, name="swin")
    assert "aten" not in imp.text
    torch.manual_seed(1)
    _assert_equal_models(first, imp.text, {"pixel_values": torch.randn(batch, 3, image, image)})
    return imp.text


@pytest.mark.slow
def test_round_trip_of_the_swin_example() -> None:
    """examples/swin.yaml -> generated module -> import -> spec, equal at another batch: the relative position
    index as `offset[N, M]` and `embedding`, the generated roll (`cat` of slices) as `concat(slice, slice)`, the
    shift mask as the region expression, the grid cut into windows `(nh wh)` with `nh: h0 / wh` declared and merged
    back to `h0` at the residual, patch merging's 2 x 2 cut, one repeat per stage."""
    text = _swin_round_trip(_SWIN, 64, 2)
    assert "offset[N, M] = (arange(N) // window_size - arange(M) // window_size" in text
    assert "over=h0, start=window_size // 2" in text and "where(apart != 0, -100.0, 0.0)" in text
    assert "into=(h0, w0)" in text and "nh: h0 / wh" in text
    for s in range(4):
        assert f", name=stage{s})" in text


@pytest.mark.slow
def test_round_trip_of_the_swin_example_at_a_larger_image() -> None:
    """128 x 128 pixels: grids 64 to 8, so every stage shifts its windows (the last too)."""
    text = _swin_round_trip({**_SWIN, "image_size": 128}, 128, 3)
    assert text.count("where(apart != 0, -100.0, 0.0)") == 4


class _ShiftedWindows(nn.Module):
    """Plain PyTorch, written as Hugging Face's SwinLayer computes (independently of nnspec's generated code): a fixed
    channels-last grid rolled by half a window, cut into windows (view + permute), attention with a per-head bias and
    the shifted-window mask built in forward from its regions, windows merged back, rolled back, residual."""

    def __init__(self, dim: int = 12, heads: int = 2, win: int = 4, shift: int = 2) -> None:
        super().__init__()
        self.heads, self.win, self.shift = heads, win, shift
        self.qkv = nn.Linear(dim, 3 * dim)
        self.bias = nn.Parameter(torch.randn(heads, win * win, win * win))
        self.proj = nn.Linear(dim, dim)

    def _mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        img = torch.zeros(h, w, device=device)
        parts = (slice(0, -self.win), slice(-self.win, -self.shift), slice(-self.shift, None))
        count = 0
        for hs in parts:
            for ws in parts:
                img[hs, ws] = count
                count += 1
        n = self.win
        m = img.view(h // n, n, w // n, n).permute(0, 2, 1, 3).reshape(h // n, w // n, n * n)
        m = m[:, :, None, :] - m[:, :, :, None]
        return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:           # x: [B, height, width, dim]
        b, h, w, c = x.shape
        n, k = self.win, self.heads
        y = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        t = y.view(b, h // n, n, w // n, n, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h // n, w // n, n * n, c)
        qkv = self.qkv(t).reshape(b, h // n, w // n, n * n, 3, k, c // k).permute(4, 0, 1, 2, 5, 3, 6)
        q, key, v = qkv[0], qkv[1], qkv[2]
        s = q @ key.transpose(-2, -1) + self.bias + self._mask(h, w, x.device)[:, :, None]
        o = (s.softmax(-1) @ v).transpose(3, 4).reshape(b, h // n, w // n, n * n, c)
        o = self.proj(o).view(b, h // n, w // n, n, n, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return x + torch.roll(o, shifts=(self.shift, self.shift), dims=(1, 2))


def test_shifted_windows_round_trip() -> None:
    """A fixed grid (`height`, `width` configured) rolled and cut into windows: `nh: height / wh` declared, the
    mask written as its regions, the windows merged back to `height`, `width` at the residual."""
    torch.manual_seed(0)
    model = _ShiftedWindows().eval()
    config = {"hidden_size": 12, "num_heads": 2, "height": 8, "width": 16, "window_size": 4}
    imp = import_module(model, {"x": torch.randn(5, 8, 16, 12)}, config, name="shifted_windows")
    text = imp.text
    assert "where(apart != 0, -100.0, 0.0)" in text and "over=height, start=window_size // 2" in text, text
    assert "nh: height / wh" in text and "aten" not in text
    _assert_equal_models(model, text, {"x": torch.randn(2, 8, 16, 12)})


class _Padded(nn.Module):
    """Hugging Face's Swin pads the grid to a multiple of the window on every layer; at a grid the window divides the
    widths are 0 and the pad is the value itself."""

    def __init__(self, bottom: int = 0) -> None:
        super().__init__()
        self.bottom = bottom
        self.proj = nn.Linear(12, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:               # x: [B, height, width, dim]
        return self.proj(torch.nn.functional.pad(x, (0, 0, 0, 0, 0, self.bottom)))


def test_a_pad_of_width_zero_is_the_value_and_another_is_refused() -> None:
    config = {"hidden_size": 12, "height": 8, "width": 16}
    torch.manual_seed(0)
    model = _Padded().eval()
    imp = import_module(model, {"x": torch.randn(5, 8, 16, 12)}, config, name="padded")
    assert "pad" not in imp.text.split("body:")[1] and "aten" not in imp.text
    _assert_equal_models(model, imp.text, {"x": torch.randn(2, 8, 16, 12)})
    with pytest.raises(ImportFailure, match=r"^aten\.pad\.default in module '<root>': a padding by \[0, 0, 0, 0, 0, 2"):
        import_module(_Padded(2).eval(), {"x": torch.randn(5, 8, 16, 12)}, config)


@pytest.mark.slow
def test_hugging_faces_swin_is_refused_cleanly(tmp_path: Path) -> None:
    """SwinModel from a small config: its zero-width pads are lifted; its attention passes the relative bias plus
    the shift mask to `scaled_dot_product_attention` as a float mask, which the importer does not lift yet."""
    from nnspec.importer import import_model

    config = transformers.SwinConfig(image_size=64, patch_size=2, window_size=4, embed_dim=16, depths=[2, 2, 2, 2],
                                     num_heads=[2, 2, 4, 4], mlp_ratio=3.0, drop_path_rate=0.0)
    config.architectures = ["SwinModel"]
    config.to_json_file(tmp_path / "config.json")
    with pytest.raises(ImportFailure, match=r"^aten\.scaled_dot_product_attention\.default in module "
                                            r"'encoder\.layers\.0\.blocks\.0\.attention'"):
        import_model(tmp_path / "config.json")
