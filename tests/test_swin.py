"""examples/swin.yaml computes what transformers' SwinModel computes (issue 15: windows, shifted windows with their
mask, relative position bias, patch merging, per-stage `depths` and `num_heads` read from the config).

The HF model is built from a small SwinConfig with random weights (never downloaded); the spec's sizes come from
the same config.json through its `hf_config:` mapping and the weights go in through its `weights: hf:` mapping
(`nnspec.load_weights`), whose affine placeholders (`blocks.{2*i+1}`) put HF's block 2i + 1 into the shifted
layer of our pair i. The small config (64x64 images, patch 2, window 4) has grids 32, 16, 8, 4: the first three
stages shift their windows by 2, the last, one window wide, does not.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

import nnspec
from nnspec.compiler.weight_map import rule_pattern, their_key
from nnspec.errors import SpecError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from nnspec.backends.torch.weights import to_source  # noqa: E402

SPEC = Path(__file__).parent.parent / "examples" / "swin.yaml"
SMALL = dict(image_size=64, patch_size=2, num_channels=3, window_size=4, embed_dim=16, num_heads=[2, 2, 4, 4],
             mlp_ratio=2.0, drop_path_rate=0.0)


def _pair(tmp_path: Path, depths: list[int], opt: int = 0) -> tuple[Any, Any]:
    """SwinModel with random weights (relative position tables too: HF starts them at zero, which would leave
    the bias lookup untested) and nnspec's module built from the same config.json, holding HF's weights."""
    config = transformers.SwinConfig(**SMALL, depths=depths, attn_implementation="eager")
    path = tmp_path / "config.json"
    config.to_json_file(path)
    torch.manual_seed(0)
    hf = transformers.SwinModel(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_()
    ours = nnspec.build(SPEC, config=path, opt=opt).eval()
    nnspec.load_weights(ours, hf.state_dict())
    return hf, ours


@pytest.mark.parametrize("opt", [0, 2])
@pytest.mark.parametrize("depths", [[2, 2, 2, 2], [2, 4, 2, 2]], ids=["2-2-2-2", "2-4-2-2"])
def test_swin_matches_hf(depths: list[int], opt: int, tmp_path: Path) -> None:
    hf, ours = _pair(tmp_path, depths, opt)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, ref = ours(pixel_values=pixels), hf(pixel_values=pixels)
    assert out["last_hidden_state"].shape == (2, 16, 128)      # a 4x4 grid of 8 * embed_dim channels
    torch.testing.assert_close(out["last_hidden_state"], ref.last_hidden_state)
    torch.testing.assert_close(out["pooler_output"], ref.pooler_output)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


def test_swin_gradients_match_hf(tmp_path: Path) -> None:
    """Training mode (dropout and stochastic depth off in the config): every parameter's gradient, in HF's names,
    against HF's model run in float64. The gradients sum many terms (up to ~170 in size), so float32 rounding
    alone moves them by up to ~1e-4; nnspec's error must stay within 3x HF's own float32 error, tensor by tensor
    (measured: at most 2.2x), where a wrong mask, bias or window order is off by orders of magnitude more."""
    hf, ours = _pair(tmp_path, [2, 2, 2, 2])
    hf64 = copy.deepcopy(hf).double()
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    weight = torch.randn(2, 16, 128, generator=torch.Generator().manual_seed(2))
    for model, dtype in ((hf, torch.float32), (ours, torch.float32), (hf64, torch.float64)):
        out = model.train()(pixel_values=pixels.to(dtype))
        hidden = out["last_hidden_state"] if isinstance(out, dict) else out.last_hidden_state
        (hidden * weight.to(dtype)).sum().backward()
    grads = to_source(ours, {k: p.grad for k, p in ours.named_parameters()})
    assert set(grads) == {k for k, _ in hf.named_parameters()}
    for key, grad in grads.items():
        ref = hf64.get_parameter(key).grad
        hf_err = (hf.get_parameter(key).grad.double() - ref).abs().max().item()
        our_err = (grad.double() - ref).abs().max().item()
        assert our_err <= 3 * hf_err + 1e-7, f"grad {key}: {our_err:.3g} > 3 x {hf_err:.3g}"


def test_swin_defaults_are_swin_tiny() -> None:
    """The spec's defaults are SwinConfig's (Swin-T: embed 96, depths 2-2-6-2, heads 3-6-12-24, window 7 on a
    56-28-14-7 grid), so its parameter count is SwinModel's."""
    hf = transformers.SwinModel(transformers.SwinConfig())
    assert nnspec.check(SPEC).params == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize(("change", "code", "says"), [
    (dict(depths=[2, 3, 2, 2]), "E015", "depth1 % 2 == 0"),
    (dict(image_size=32), "E015", "h3 % window_size == 0"),
    (dict(depths=[2, 2], num_heads=[2, 4]), "E022", "depths.2"),
], ids=["odd-depth", "small-grid", "two-stages"])
def test_swin_refuses_configs_it_does_not_implement(change: dict[str, Any], code: str, says: str,
                                                     tmp_path: Path) -> None:
    """An odd stage depth (layers come in plain/shifted pairs), a last grid smaller than the window (2x2 against
    4, where HF would clamp the window) and a config of other than four stages are located errors, never a
    silently different model."""
    config = transformers.SwinConfig(**{**SMALL, "depths": [2, 2, 2, 2], **change})
    path = tmp_path / "config.json"
    config.to_json_file(path)
    with pytest.raises(SpecError) as err:
        nnspec.check(SPEC, config=path)
    assert err.value.code == code and says in str(err.value)


# ---- the weight map's affine placeholders, which the Swin mapping needs ----

def test_affine_placeholders_fill_from_our_index() -> None:
    rule = "stage{s}.{i}.shifted.fc1.weight"
    m = rule_pattern(rule).match("stage3.2.shifted.fc1.weight")
    assert m is not None
    assert their_key("encoder.layers.{s}.blocks.{2*i+1}.fc1", m) == "encoder.layers.3.blocks.5.fc1"
    assert their_key("blocks.{2*i}", m) == "blocks.4"
    assert their_key("blocks.{i+3}", m) == "blocks.5"
    assert their_key("layers.{i}", m) == "layers.2"


def test_affine_placeholder_must_name_our_placeholder() -> None:
    text = (SPEC.read_text().replace("encoder.layers.{s}.blocks.{2*i+1}.layernorm_before.weight",
                                     "encoder.layers.{s}.blocks.{2*j+1}.layernorm_before.weight"))
    with pytest.raises(SpecError) as err:
        nnspec.check(text)
    assert err.value.code == "E027"
    assert re.search(r"must use the same placeholders", str(err.value))
