"""`nnspec import` of PVT-v2 at a square image and of layers carrying several values.

A square image makes a stage's grid two axes of one size. Named by size, they would leave the stage's block as
`16` and `16_1`, which no annotation can write; named by where they come from (the dim continuing the input axis's
numbering: `height` -> `height0` -> `height1`, each stage's resolution), they keep their names in the caller and stay
apart. A graph transformer's layers carry node and edge features together: the importer writes the tuple carry as
the language spells it, `h, e = repeat(n_layer, layer, (h, e), adj, name=layers)`.

Expected values: the first model's own outputs (a generated module, or the plain-PyTorch module under test), with
its state dict loaded into the imported spec through the spec's own mapping, at other sizes than the traced ones.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import nnspec
from nnspec.importer import ImportFailure, import_module
from nnspec.importer.naming import Dims

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_import_round_trip import _assert_equal_models, _config_and_free  # noqa: E402


# ---- axes named by provenance ----------------------------------------------------------------------------------
def test_an_axis_is_named_after_the_dim_continuing_its_source() -> None:
    dims = Dims(values={"height": 64, "width": 64, "height0": 16, "width0": 16, "height1": 8, "width1": 8, "c": 8})
    assert dims.successor("height", 16, set()) == "height0"
    assert dims.successor("width0", 8, set()) == "width1"
    assert dims.successor("height0", 2, set()) is None              # a reduced grid of another size: no such dim
    assert dims.successor("height", 16, {"height0"}) is None        # a name the value has already
    assert dims.successor("c", 8, set()) is None                    # no `c0`
    # a numbered dim names only what comes from its source: a width of 8 is `c`, never `width1` or `height1`
    assert dims.name(8) == "c" and dims.name(16) == "16"


class _Patches(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.proj(x).permute(0, 2, 3, 1))            # channels-last between convolutions (PVT)
        return h.permute(0, 3, 1, 2)


class _Pyramid(nn.Module):
    """Three stages, each a block whose strided convolution halves a square grid: each reads the grid the previous
    one made, outside the block that made it."""

    def __init__(self) -> None:
        super().__init__()
        self.stage0, self.stage1, self.stage2 = _Patches(3, 4), _Patches(4, 4), _Patches(4, 4)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.stage2(self.stage1(self.stage0(pixel_values)))


_SQUARE = {"num_channels": 3, "height": 16, "width": 16, "height0": 8, "width0": 8, "height1": 4, "width1": 4,
           "height2": 2, "width2": 2}


def test_a_square_grid_leaving_its_block_is_named_by_provenance() -> None:
    torch.manual_seed(0)
    model = _Pyramid().eval()
    imp = import_module(model, {"pixel_values": torch.randn(5, 3, 16, 16)}, dict(_SQUARE), name="pyramid")
    text = imp.text
    assert "over=(height, width), into=(height0, width0)" in text
    assert "over=(height0, width0), into=(height1, width1)" in text
    assert "output0: float32[B, 4, height2, width2]" in text and "_1" not in text
    _assert_equal_models(model, text, {"pixel_values": torch.randn(2, 3, 16, 16)})


def test_a_square_grid_without_dims_to_name_it_is_refused() -> None:
    """Near misses: no numbered dims, or one whose size is not the grid's: the grid is named by its size, which
    leaves the first stage as `8`, `8_1`: refused with the op and module, nothing written."""
    model = _Pyramid().eval()
    inputs = {"pixel_values": torch.randn(5, 3, 16, 16)}
    why = r"^aten\.conv2d\.default in module 'stage1\.proj': a convolution over a square grid"
    with pytest.raises(ImportFailure, match=why):
        import_module(model, inputs, {"num_channels": 3, "height": 16, "width": 16})
    with pytest.raises(ImportFailure, match=why):
        import_module(model, inputs, {**_SQUARE, "height0": 9, "width0": 9})


_PVT = dict(hidden_size0=8, hidden_size1=16, hidden_size2=24, hidden_size3=40, heads0=2, heads1=2, heads2=3,
            heads3=5, depth0=1, depth1=1, depth2=1, depth3=1)


def test_round_trip_of_the_pvt_v2_example_at_a_square_image() -> None:
    """PVT-v2 at its own (square) image: each stage's grid is `(heightK, widthK)`, the config's names, inside the
    stage and in the next one; each stage's layers a `repeat`."""
    dims = dict(image_height=64, image_width=64, **_PVT)
    path = str(ROOT / "examples/pvt_v2.yaml")
    config, free = _config_and_free(path, **dims)
    torch.manual_seed(0)
    first = nnspec.build(path, **dims).eval()
    imp = import_module(first, {"pixel_values": torch.randn(free["B"], 3, 64, 64)}, config, name="pvt")
    text = imp.text
    for k in range(4):
        src = "(height, width)" if k == 0 else f"(height{k - 1}, width{k - 1})"
        assert f"over={src}, into=(height{k}, width{k}), name=proj)" in text
    assert text.count("repeat(1, ") == 4 and "groups=" in text and "aten" not in text
    assert "last_hidden_state" not in text and "float32[B, out_channels, height3, width3]" in text
    _assert_equal_models(first, text, {"pixel_values": torch.randn(2, 3, 64, 64)})


# ---- a repeat carrying several values ----------------------------------------------------------------------------
def _graph_inputs(b: int, n: int) -> dict[str, torch.Tensor]:
    adj = (torch.rand(b, n, n) > 0.4) | torch.eye(n, dtype=torch.bool)     # self-loops: no empty row
    return {"x": torch.randn(b, n, 16), "adj": adj, "edges": torch.randn(b, n, n, 4), "lap_pe": torch.randn(b, n, 6)}


def test_round_trip_of_the_graph_transformer_edges_example() -> None:
    """Node and edge features carried through the layers together: one block `layer(h, e, adj)` returning both, and
    `y, e = repeat(n_layer, layer, (h, e), adj, name=layers)`."""
    path = str(ROOT / "examples/small/graph_transformer_edges.yaml")
    config, _ = _config_and_free(path, n_layer=2)
    torch.manual_seed(0)
    first = nnspec.build(path, n_layer=2).eval()
    imp = import_module(first, _graph_inputs(5, 7), config, name="graph")
    text = imp.text
    call = re.search(r"\n  (\w+), (\w+) = repeat\(n_layer, layer, \((\w+), (\w+)\), adj, name=layers\)\n", text)
    assert call, text
    assert "layers_0" not in text and text.count("name=q)") == 1 and "adj: bool[B, T, S]" in text
    block = re.search(r"\n  layer\((\w+), (\w+), (\w+)\): \|\n((?:    .*\n)+)", text)
    assert block and re.search(r"return \w+, \w+\n$", block.group(4))
    assert f"{block.group(3)}[B, T, " in block.group(4)          # the third parameter is the adjacency, read as is
    _assert_equal_models(first, text, _graph_inputs(2, 9))


class _Pair(nn.Module):
    """A layer of two streams of other widths (`h` d, `e` 2d): each result reads both, and a mask `m[B, T]` reaches
    every layer as it is. `flip`: the results come back edges first."""

    def __init__(self, d: int, flip: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.norm = nn.Linear(2 * d, d), nn.Linear(d, 2 * d), nn.LayerNorm(d)
        self.flip = flip

    def forward(self, h: torch.Tensor, e: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h2 = self.norm(h + torch.tanh(self.a(e)) * m[..., None])
        e2 = e * torch.sigmoid(self.b(h))
        return (e2, h2) if self.flip else (h2, e2)


class _Streams(nn.Module):
    def __init__(self, n: int, order: str, d: int = 8) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Pair(d, flip=order == "flip") for _ in range(n)])
        self.order = order

    def forward(self, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, e = x, y
        for layer in self.layers:
            if self.order == "flip":          # the results feed the parameters crosswise
                e, h = layer(h, e, m)
            elif self.order == "between":     # near miss: work between two layers, so they do not chain
                h, e = layer(h, e, m)
                h = h * 2.0
            else:
                h, e = layer(h, e, m)
        return h, e


def _streams(b: int, t: int) -> dict[str, torch.Tensor]:
    return {"x": torch.randn(b, t, 8), "y": torch.randn(b, t, 16), "m": torch.rand(b, t)}


@pytest.mark.parametrize(("n", "order"), [(3, "same"), (3, "flip"), (1, "same"), (1, "flip")])
def test_a_module_list_carrying_two_values_is_a_tuple_repeat(n: int, order: str) -> None:
    torch.manual_seed(0)
    model = _Streams(n, order).eval()
    config = {"hidden": 8, "num_layers": n}
    text = import_module(model, _streams(4, 5), config, name="streams").text
    assert re.search(r"\n  \w+, \w+ = repeat\(num_layers, layer, \(\w+, \w+\), m, name=layers\)\n", text), text
    assert text.count("name=norm)") == 1
    _assert_equal_models(model, text, _streams(2, 7))


def test_layers_whose_results_do_not_feed_the_next_are_separate_calls() -> None:
    torch.manual_seed(0)
    model = _Streams(2, "between").eval()
    text = import_module(model, _streams(4, 5), {"hidden": 8, "num_layers": 2}, name="streams").text
    assert "repeat(" not in text and "name=layers_0)" in text and "name=layers_1)" in text
    _assert_equal_models(model, text, _streams(2, 7))


class _SharedPair(nn.Module):
    """One layer applied three times with its own weights each time: a shared-weight tuple repeat."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = _Pair(8)

    def forward(self, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, e = x, y
        for _ in range(3):
            h, e = self.layer(h, e, m)
        return h, e


def test_a_shared_layer_carrying_two_values_is_a_shared_tuple_repeat() -> None:
    torch.manual_seed(0)
    model = _SharedPair().eval()
    text = import_module(model, _streams(4, 5), {"hidden": 8}, name="shared").text
    assert re.search(r"= repeat\(3, layer, \(\w+, \w+\), m, name=layer, shared=true\)", text), text
    _assert_equal_models(model, text, _streams(2, 7))


# ---- a recurrence written inline ---------------------------------------------------------------------------------
class _InlineScan(nn.Module):
    """A gated linear recurrence written as a Python loop in forward, with no step module (Hugging Face Mamba's
    slow path): `s = g[:, i] * s + u[:, i]`, its per-step outputs stacked along the sequence."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.inp, self.gate, self.out = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, g = self.inp(x), torch.sigmoid(self.gate(x))
        s = torch.zeros(x.shape[0], x.shape[2])
        ys = []
        for i in range(x.shape[1]):
            s = g[:, i] * s + u[:, i]
            ys.append(torch.tanh(s))
        return self.out(torch.stack(ys, dim=1))


def test_a_recurrence_written_inline_is_a_scan() -> None:
    torch.manual_seed(0)
    model = _InlineScan().eval()
    text = import_module(model, {"x": torch.randn(3, 5, 8)}, {"hidden": 8}, name="inline").text
    assert re.search(r"= scan\(step, \w+, gate, inp, over=T, name=step\)", text) and "zeros(B, hidden)" in text
    assert "take(" not in text and "stack" not in text
    _assert_equal_models(model, text, {"x": torch.randn(2, 9, 8)})


class _Stacked(nn.Module):
    """Near miss: a stack of two values that are no loop's steps (each reads all of `x`, no entry of a sequence)."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.a(x), torch.tanh(self.b(x))], dim=1)


def test_a_stack_of_values_that_are_no_loop_is_refused() -> None:
    with pytest.raises(ImportFailure, match=r"^aten\.stack\.default in module '<root>': a stack of values that are "
                                            r"not the per-step outputs"):
        import_module(_Stacked().eval(), {"x": torch.randn(3, 5, 8)}, {"hidden": 8})


class _Parts(nn.Module):
    """`torch.split` into parts of other sizes (Hugging Face Mamba's `x_proj` output: rank, B, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.out = nn.Linear(8, 11), nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, b, c = torch.split(self.proj(x), [3, 4, 4], dim=-1)
        return self.out(r) * b + c


def test_a_split_into_parts_of_other_sizes_is_slices() -> None:
    torch.manual_seed(0)
    model = _Parts().eval()
    config = {"hidden": 8, "rank": 3, "state_size": 4}
    text = import_module(model, {"x": torch.randn(2, 5, 8)}, config, name="parts").text
    assert "stop=rank, into=rank)" in text and "start=rank, stop=state_size + rank, into=state_size)" in text
    assert "start=state_size + rank, into=state_size)" in text
    _assert_equal_models(model, text, {"x": torch.randn(3, 7, 8)})


@pytest.mark.slow
def test_hf_mamba_is_refused_cleanly_after_its_inline_scan() -> None:
    """Hugging Face `MambaForCausalLM` from a small config: its inline loop is lifted as a scan now; what stops the
    import is its causal convolution written as a functional `conv1d` sliced back to the sequence's length."""
    transformers = pytest.importorskip("transformers")
    from nnspec.importer.capture import from_hf_config

    cfg = transformers.MambaConfig(vocab_size=50, hidden_size=16, state_size=6, num_hidden_layers=2,
                                   time_step_rank=9, expand=2, conv_kernel=4)
    cfg.architectures = ["MambaForCausalLM"]
    model, inputs, config = from_hf_config(cfg)
    with pytest.raises(ImportFailure, match=r"^aten\.conv1d\.default in module 'backbone\.layers\.0\.mixer'"):
        import_module(model, inputs, config)
