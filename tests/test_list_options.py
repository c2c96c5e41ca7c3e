"""List-valued options (issue 15, section 2): a repeat whose iterations differ by a per-layer option listed in the
spec or a Hugging Face config (`mlp_only_layers: [1, 3]`, `layer_types: [...]`), read inside a block by
`i in xs` and `xs[i]`. Interpreter and generated code (-O0, -O2) against plain PyTorch written here from the same
weights; the list read whole from a config JSON; the errors located."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import nnspec
from nnspec.compiler.hf_config import load_config, map_config
from nnspec.spec.load import load
from tests.test_repeat_state import all_agree, lin, spec

DENSE = """\
nnspec: 1
name: dense_moe
dims: {d: 8, n_layer: 4}
options:
  dense_layers:
    default: [1, 3]
    hf: {key: mlp_only_layers}
inputs:
  x: float32[B, T, d]
outputs:
  y: float32[B, T, d]
blocks:
  layer(h, i): |
    return h + linear(h, d, name=dense) if i in dense_layers else h * 0.5 + linear(h, d, name=other)
body: |
  y = repeat(n_layer, layer, x, name=layers, index=i)
"""


def _reference(x: torch.Tensor, dense: list[int]):
    def ref(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = x
        for i in range(4):   # listed layers: h + dense(h); the others: h / 2 + other(h)
            h = h + lin(w, h, f"layers.{i}.dense") if i in dense else h * 0.5 + lin(w, h, f"layers.{i}.other")
        return {"y": h}
    return ref


def test_membership_in_a_list_option_chooses_each_layers_body() -> None:
    x = torch.randn(2, 5, 8)
    w = all_agree(DENSE, _reference(x, [1, 3]), x=x)
    assert sorted(k for k in w if ".dense." in k) == ["layers.1.dense.bias", "layers.1.dense.weight",
                                                      "layers.3.dense.bias", "layers.3.dense.weight"]
    assert sorted(k for k in w if ".other." in k) == ["layers.0.other.bias", "layers.0.other.weight",
                                                      "layers.2.other.bias", "layers.2.other.weight"]


def test_the_list_is_read_whole_from_a_config(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(DENSE)
    (tmp_path / "config.json").write_text(json.dumps({"mlp_only_layers": [0]}))
    config, source = load_config(tmp_path / "config.json")
    overrides, warnings = map_config(load(tmp_path / "spec.yaml"), config, source)
    assert overrides == {"dense_layers": [0]} and warnings == []
    x = torch.randn(2, 3, 8)
    w = all_agree(DENSE.replace("default: [1, 3]", "default: [0]"), _reference(x, [0]), x=x)
    assert sorted(k for k in w if ".dense." in k) == ["layers.0.dense.bias", "layers.0.dense.weight"]
    result = nnspec.check(tmp_path / "spec.yaml", config=tmp_path / "config.json")
    assert result.model.options["dense_layers"] == [0]


def test_indexing_a_list_option_per_layer() -> None:
    text = spec("y = repeat(n_layer, layer, x, name=layers, index=i)\n", """\
        layer(h, i): |
          return h * scales[i] if kinds[i] == "scale" else h + linear(h, d, name=p)
        """, dims="{d: 4, n_layer: 3}").replace(
        "inputs:", 'options:\n  kinds: ["scale", "linear", "scale"]\n  scales: [2.0, 1.0, 3.0]\ninputs:')
    x = torch.randn(2, 3, 4)

    def ref(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"y": (lin(w, x * 2.0, "layers.1.p") + x * 2.0) * 3.0}

    w = all_agree(text, ref, x=x)
    assert sorted(w) == ["layers.1.p.bias", "layers.1.p.weight"]


def test_a_config_list_of_mappings_is_refused(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(DENSE)
    (tmp_path / "config.json").write_text(json.dumps({"mlp_only_layers": [{"a": 1}]}))
    with pytest.raises(nnspec.SpecError) as err:
        nnspec.check(tmp_path / "spec.yaml", config=tmp_path / "config.json")
    assert err.value.code == "E022" and "takes a list of numbers" in err.value.message


@pytest.mark.parametrize(("block", "code", "message", "col"), [
    ("return h * kinds[i]", "E019", "index 2 is out of range for a list of 2 (0 to 1)", 16),
    ("return h if h in kinds else h", "E026", "'in' asks whether a list option holds a value", 17),
    ("return h if i in 3 else h", "E026", "'in' asks whether a list option holds a value", 17),
])
def test_list_errors_are_located(block: str, code: str, message: str, col: int) -> None:
    text = spec("y = repeat(n_layer, layer, x, name=layers, index=i)\n", f"""\
        layer(h, i): |
          {block}
        """).replace("inputs:", "options:\n  kinds: [1.0, 2.0]\ninputs:")
    with pytest.raises(nnspec.SpecError) as err:
        nnspec.check(text)
    assert err.value.code == code and message in err.value.message, err.value
    line = text.splitlines().index(f"    {block}") + 1
    assert (err.value.span.line, err.value.span.col) == (line, col)


def test_a_dim_reads_an_entry_of_a_list_option() -> None:
    text = ("nnspec: 1\nname: widths\ndims: {d: 4, e: 'widths[1]'}\noptions:\n  widths: [3, 6]\n"
            "inputs:\n  x: float32[B, d]\noutputs:\n  y: float32[B, e]\nbody: |\n  y = linear(x, e)\n")
    assert nnspec.check(text).params == 4 * 6 + 6
