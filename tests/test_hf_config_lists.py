"""Hugging Face configs (issue 15, section 4): list-valued keys read per element, a mapped key that reads nothing
is a located error, `require:` pins lists, `head_dim: null` means "derive it", and keys a config omits take the
default the spec states Hugging Face uses, with a warning. Expected sizes are counted by hand from the spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import nnspec

ROOT = Path(__file__).parent.parent

STAGES = """\
nnspec: 1
name: stages
dims:
  d: 8
  n_head: 2
  head_dim: d / n_head
options:
  depth0: {default: 1, hf: {key: depths.0}}
  depth1: {default: 1, hf: {key: depths.1}}
  width1: {default: 4, hf: {key: hidden_sizes.1}}
inputs:
  x: float32[B, T, d]
outputs:
  y: float32[B, T, d]
blocks:
  layer(x, hidden): |
    return x + linear(gelu(linear(x, hidden, name=fc1)), d, name=fc2)
body: |
  h = repeat(depth0, layer, x, 16, name=stage0)
  y = repeat(depth1, layer, h, width1, name=stage1)
hf_config:
  require: {mlp_only_layers: []}
  defaults: {num_labels: 2}
"""


def _layer_params(hidden: int, d: int = 8) -> int:
    """fc1 (d -> hidden, with bias) and fc2 (hidden -> d, with bias)."""
    return d * hidden + hidden + hidden * d + d


def _config(tmp_path: Path, **keys: Any) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(keys))
    return path


def _spec(tmp_path: Path, text: str = STAGES) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_list_elements_set_per_stage_options(tmp_path: Path) -> None:
    config = _config(tmp_path, depths=[2, 3], hidden_sizes=[16, 12], mlp_only_layers=[], num_labels=7)
    result = nnspec.check(_spec(tmp_path), config=config)
    assert result.params == 2 * _layer_params(16) + 3 * _layer_params(12)
    # the first stage's hidden size is the spec's 16, so hidden_sizes.0 is read by nothing: a warning says so
    assert [w.message for w in result.warnings] == ["config key 'hidden_sizes.0' is not used by this spec",
                                                    "config key 'num_labels' is not used by this spec"]


@pytest.mark.parametrize(("keys", "why"), [
    ({"depths": [2]}, "option depth1 reads 'depths.1', which this config does not have: depths is a list of 1 "
                      "entries, indexed 0 to 0"),
    ({"depths": 2}, "option depth0 reads 'depths.0', which this config does not have: depths is 2, not a list or "
                    "mapping"),
    ({"depths": {"first": 2}}, "option depth0 reads 'depths.0', which this config does not have: depths has no key "
                               "'0' (it has: first)"),
])
def test_a_mapped_key_that_reads_nothing_is_a_located_error(tmp_path: Path, keys: dict[str, Any], why: str) -> None:
    config = _config(tmp_path, **keys, hidden_sizes=[16, 12])
    with pytest.raises(nnspec.SpecError) as info:
        nnspec.check(_spec(tmp_path), config=config)
    err = info.value
    assert err.code == "E022" and err.message == why
    assert err.span is not None and (err.span.line, err.span.col) == (1, 2)        # the "depths" key of the JSON
    assert err.notes and err.notes[0].span is not None and err.notes[0].span.source.name.endswith("spec.yaml")


def test_require_pins_a_list(tmp_path: Path) -> None:
    ok = _config(tmp_path, depths=[1, 1], hidden_sizes=[4, 4], mlp_only_layers=[])
    nnspec.check(_spec(tmp_path), config=ok)
    bad = _config(tmp_path, depths=[1, 1], hidden_sizes=[4, 4], mlp_only_layers=[0, 2])
    with pytest.raises(nnspec.SpecError, match=r"implements only mlp_only_layers=\[\], the config has \[0, 2\]"):
        nnspec.check(_spec(tmp_path), config=bad)


def test_null_head_dim_is_derived(tmp_path: Path) -> None:
    """`head_dim: null` asks for head_dim to be derived: the spec's d / n_head = 12 / 3; a spec that gives
    head_dim only a number cannot derive it."""
    config = _config(tmp_path, d=12, n_head=3, head_dim=None, depths=[1, 1], hidden_sizes=[4, 4])
    result = nnspec.check(_spec(tmp_path), config=config)
    assert result.model.dims.concrete(result.model.dims.declared["head_dim"]) == 4
    assert result.params == _layer_params(16, d=12) + _layer_params(4, d=12)
    fixed = STAGES.replace("head_dim: d / n_head", "head_dim: 4")
    with pytest.raises(nnspec.SpecError, match="'head_dim' is null, which asks for it to be derived"):
        nnspec.check(_spec(tmp_path, fixed), config=config)


def test_an_omitted_key_takes_the_stated_default_with_a_warning(tmp_path: Path) -> None:
    text = STAGES.replace("  d: 8\n", "  d: 8\n  num_labels: 1000\n")
    result = nnspec.check(_spec(tmp_path, text), config=_config(tmp_path, depths=[1, 1], hidden_sizes=[4, 4]))
    assert result.model.dims.concrete(result.model.dims.declared["num_labels"]) == 2
    assert any(w.message == "the config does not set 'num_labels'; using 2, the default this spec states Hugging "
               "Face uses" and w.span is not None for w in result.warnings)
    given = nnspec.check(_spec(tmp_path, text), config=_config(tmp_path, depths=[1, 1], hidden_sizes=[4, 4],
                                                              num_labels=5))
    assert given.model.dims.concrete(given.model.dims.declared["num_labels"]) == 5
    assert not any("num_labels" in w.message for w in given.warnings)


def test_a_default_vit_config_builds_hugging_faces_two_labels(tmp_path: Path) -> None:
    """A default ViTConfig writes neither num_labels nor id2label; transformers then uses 2 labels."""
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48,
                                    image_size=32, patch_size=8)
    config.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert "num_labels" not in written and "id2label" not in written
    want = transformers.ViTForImageClassification(config).classifier.out_features
    result = nnspec.check(ROOT / "examples" / "vit.yaml", config=tmp_path / "config.json")
    assert result.model.dims.concrete(result.model.dims.declared["num_labels"]) == want == 2
    assert any("'num_labels'" in w.message for w in result.warnings)
