"""PVT-v2 (examples/pvt_v2.yaml) conforms to transformers' PvtV2Model (issue 15, "Done when").

The HF model is built from a `PvtV2Config` with random weights (never downloaded); the spec reads the same
config.json (per-stage lists through `depths.0`-style keys), takes HF's state dict through its `weights: hf:`
mapping, and must give HF's `last_hidden_state` (and, in training mode, HF's gradients) within `assert_close`.
Two small configs differ in every per-stage list; the second has a non-square image, a spatial reduction that does
not divide the grid (floored, as torch's strided convolution), no q/k/v bias and the tanh GELU. The parameter count
is also counted by hand from the architecture.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

import nnspec

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from nnspec.backends.torch.weights import to_source  # noqa: E402

SPEC = Path(__file__).parent.parent / "examples" / "pvt_v2.yaml"

CONFIGS: dict[str, dict[str, Any]] = {
    # 32x32 -> stage grids 8x8, 4x4, 2x2, 1x1
    "square": dict(image_size=32, depths=[1, 2, 1, 1], hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 2, 3, 4],
                   sr_ratios=[2, 2, 1, 1], mlp_ratios=[2, 2, 4, 4], patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2]),
    # 48x40 -> 24x20, 12x10, 6x5, 3x3; stage 2 reduces 6x5 by 2 to 3x2
    "other": dict(image_size=[48, 40], depths=[2, 1, 1, 2], hidden_sizes=[16, 24, 32, 40],
                  num_attention_heads=[2, 3, 4, 5], sr_ratios=[4, 2, 2, 1], mlp_ratios=[4, 2, 3, 2],
                  patch_sizes=[5, 3, 3, 3], strides=[2, 2, 2, 2], qkv_bias=False, hidden_act="gelu_new"),
}


def _pair(name: str, tmp_path: Path, opt: int = 0) -> tuple[Any, Any, Any, Path]:
    """(HF model, nnspec module with HF's weights loaded, pixel batch, config.json)."""
    config = transformers.PvtV2Config(**CONFIGS[name])
    path = tmp_path / "config.json"
    config.to_json_file(path)
    torch.manual_seed(0)
    hf = transformers.PvtV2Model(config).eval()
    ours = nnspec.build(SPEC, config=path, opt=opt).eval()
    nnspec.load_weights(ours, hf.state_dict())
    height, width = config.image_size
    pixels = torch.randn(2, config.num_channels, height, width, generator=torch.Generator().manual_seed(1))
    return hf, ours, pixels, path


@pytest.mark.parametrize("opt", [0, 2])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_eval_output_matches_hf(name: str, opt: int, tmp_path: Path) -> None:
    hf, ours, pixels, _ = _pair(name, tmp_path, opt)
    with torch.no_grad():
        got, want = ours(pixel_values=pixels), hf(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradients_match_hf(name: str, tmp_path: Path) -> None:
    """Training-mode gradients of a random projection of the output, parameter by parameter, against HF's model
    run in float64: nnspec's float32 error is at most twice HF's own float32 error (plus float32's resolution
    of the gradient's scale). Comparing the two float32 runs directly would test rounding: across four stages
    of layernorms, their summation orders differ by about 1e-4 relative on some elements of each."""
    hf, ours, pixels, _ = _pair(name, tmp_path)
    hf64 = copy.deepcopy(hf).double()
    probe = torch.randn(ours(pixel_values=pixels).shape, generator=torch.Generator().manual_seed(2))
    for model in (hf, hf64, ours):
        model.train()
    (hf(pixel_values=pixels).last_hidden_state * probe).sum().backward()
    (hf64(pixel_values=pixels.double()).last_hidden_state * probe.double()).sum().backward()
    (ours(pixel_values=pixels) * probe).sum().backward()
    grads = to_source(ours, {k: p.grad for k, p in ours.named_parameters()})
    assert set(grads) == {k for k, _ in hf.named_parameters()}
    for key, grad in grads.items():
        ref = hf64.get_parameter(key).grad
        ours_err = (grad.double() - ref).abs().max().item()
        hf_err = (hf.get_parameter(key).grad.double() - ref).abs().max().item()
        assert ours_err <= 2 * hf_err + 1e-6 * ref.abs().max().item(), f"{key}: {ours_err:.3g} vs HF {hf_err:.3g}"


def _stage_params(c_in: int, d: int, patch: int, depth: int, sr: int, hidden: int, qkv_bias: bool = True) -> int:
    """One stage counted from the architecture: patch conv + layernorm, `depth` layers, the final layernorm."""
    embed = d * c_in * patch * patch + d + 2 * d
    reduction = d * d * sr * sr + d + 2 * d if sr > 1 else 0          # strided conv + layernorm
    attention = 3 * (d * d + (d if qkv_bias else 0)) + d * d + d + reduction
    mix_ffn = d * hidden + hidden + hidden * 3 * 3 + hidden + hidden * d + d   # dense1, depthwise 3x3, dense2
    return embed + depth * (2 * d + attention + 2 * d + mix_ffn) + 2 * d


def test_default_sizes_are_pvt_v2_b0_counted_by_hand() -> None:
    widths, depths, srs, ratios, patches = [32, 64, 160, 256], [2, 2, 2, 2], [8, 4, 2, 1], [8, 8, 4, 4], [7, 3, 3, 3]
    ins = [3, *widths[:-1]]
    want = sum(_stage_params(c, d, p, n, sr, d * r) for c, d, p, n, sr, r in zip(ins, widths, patches, depths, srs,
                                                                                  ratios, strict=True))
    assert nnspec.check(SPEC).params == want
    with torch.no_grad():   # strides 4, 2, 2, 2 take 224 to 7
        assert nnspec.build(SPEC).eval()(pixel_values=torch.zeros(1, 3, 224, 224)).shape == (1, 256, 7, 7)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_count_matches_hf_and_the_hand_count(name: str, tmp_path: Path) -> None:
    hf, ours, _, path = _pair(name, tmp_path)
    c = CONFIGS[name]
    ins = [3, *c["hidden_sizes"][:-1]]
    want = sum(_stage_params(i, d, p, n, sr, int(d * r), c.get("qkv_bias", True)) for i, d, p, n, sr, r in zip(
        ins, c["hidden_sizes"], c["patch_sizes"], c["depths"], c["sr_ratios"], c["mlp_ratios"], strict=True))
    assert nnspec.check(SPEC, config=path).params == want
    assert sum(p.numel() for p in ours.parameters()) == want
    assert sum(p.numel() for p in hf.parameters()) == want


@pytest.mark.parametrize(("keys", "needle"), [
    (dict(depths=[1, 1], hidden_sizes=[8, 16], num_attention_heads=[1, 2], sr_ratios=[2, 1], mlp_ratios=[2, 2],
          patch_sizes=[7, 3], strides=[4, 2], num_encoder_blocks=2), "depths.2"),
    (dict(drop_path_rate=0.1), "drop_path_rate"),
    (dict(linear_attention=True), "linear_attention"),
])
def test_configs_the_spec_does_not_implement_are_refused(keys: dict[str, Any], needle: str, tmp_path: Path) -> None:
    """A two-stage config (the spec has four), stochastic depth and linear attention are E022, never ignored."""
    path = tmp_path / "config.json"
    transformers.PvtV2Config(**keys).to_json_file(path)
    with pytest.raises(nnspec.SpecError) as info:
        nnspec.check(SPEC, config=path)
    assert info.value.code == "E022" and needle in str(info.value)


OPTION_SIZES = """\
nnspec: 1
name: option_sizes
dims:
  d: width          # a dim that is an option's value, as PVT's `height: image_height`
  n_heads: heads
options:
  width: 8
  heads: 2
inputs:
  x: float32[B, d]
outputs:
  y: float32[B, n_heads]
blocks:
  head_energy(x[B, C], n): |
    s[B, n] = x[B, (n hd)] * x[B, (n hd)]
    return s
body: |
  y = head_energy(x, heads)     # an integer option as a block's size parameter splits an axis
"""


def test_integer_options_serve_as_sizes(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(OPTION_SIZES)
    x = torch.randn(3, 12)
    model = nnspec.build(spec, width=12, heads=3).eval()
    # y[b, j] = sum over the j-th head's 4 channels of x^2
    torch.testing.assert_close(model(x=x), (x.view(3, 3, 4) ** 2).sum(-1))
