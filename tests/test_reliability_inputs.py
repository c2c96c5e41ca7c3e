"""Issue 22, items 9-11 and 15-17: hostile numbers, operand counts and checkpoints give located errors (specs) or a
`WeightError` naming the file and key (checkpoints), never a raw exception or a hang."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import nnspec
from nnspec.cli import app
from nnspec.errors import SpecError

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

from nnspec.backends.torch.weights import WeightError, load_weights  # noqa: E402

HEAD = """nnspec: 1
name: m
XX
inputs:
  x: float32[B, d]
outputs:
  y: float32[B, d]
body: |
  y = relu(x)
"""
BIG = "9" * 5000


def located(text: str, code: str, line: int) -> SpecError:
    with pytest.raises(SpecError) as info:
        nnspec.check(text)
    assert info.value.code == code, info.value.render()
    assert info.value.span is not None and info.value.span.line == line, info.value.render()
    info.value.render()
    return info.value


# ---- 10: integers past Python's 4,300-digit int/str limit ----
@pytest.mark.parametrize("where, text, line", [
    ("a dim", HEAD.replace("XX", f"dims:\n  d: {BIG}"), 4),
    ("a hex dim", HEAD.replace("XX", "dims:\n  d: 0x" + "f" * 5000), 4),
    ("an option", HEAD.replace("XX", f"dims:\n  d: 4\noptions:\n  k: {BIG}"), 6),
    ("an expression literal", HEAD.replace("XX", "dims:\n  d: 4").replace("relu(x)", f"relu(x) * {BIG}"), 10),
    ("a float literal", HEAD.replace("XX", "dims:\n  d: 4").replace("relu(x)", f"relu(x) * 1.{BIG}"), 10),
    ("a type axis", HEAD.replace("XX", "dims:\n  d: 4").replace("x: float32[B, d]", f"x: float32[B, {BIG}]"), 6),
    ("a quoted dim expression", HEAD.replace("XX", f'dims:\n  d: "{BIG}"'), 4),
], ids=lambda v: v if isinstance(v, str) and len(v) < 40 else "")
def test_huge_integers_are_located_errors(where: str, text: str, line: int) -> None:
    located(text, "E023", line)


def test_huge_integers_and_duplicate_keys_in_a_config_are_located_errors(tmp_path: Path) -> None:
    spec = tmp_path / "m.yaml"
    spec.write_text(HEAD.replace("XX", "dims:\n  d: 4"))
    for name, data, says in [("big.json", '{"d": ' + BIG + "}", "5,000 digits"),
                             ("dup.json", '{"d": 8, "d": 4}', "twice")]:
        config = tmp_path / name
        config.write_text(data)
        result = CliRunner().invoke(app, ["check", str(spec), "--config", str(config)])
        assert result.exit_code == 1, result.output
        assert "E022" in result.output and says in result.output and f"{name}:1:" in result.output


# ---- 11: more operands than an op takes ----
def test_concat_of_65_operands_is_a_located_error() -> None:
    text = HEAD.replace("XX", "").replace("y: float32[B, d]", "y: float32[B, S]")
    text = text.replace("relu(x)", "concat(" + ", ".join(["x"] * 65) + ", over=d, into=S)")
    err = located(text, "E019", 9)
    assert "64" in err.message
    nnspec.check(text.replace(", ".join(["x"] * 65), ", ".join(["x"] * 64)))   # the bound itself is accepted


# ---- 15-17: checkpoints ----
SPEC = HEAD.replace("XX", "dims:\n  d: 4").replace("relu(x)", "linear(x, d, name=fc)") + """weights:
  hf:
    "fc.weight": "fc.weight"
    "fc.bias": "fc.bias"
"""


@pytest.fixture(scope="module")
def module() -> Any:
    return nnspec.build(SPEC)


GOOD = {"fc.weight": torch.arange(16.0).reshape(4, 4), "fc.bias": torch.arange(4.0)}


def _bad_checkpoints(d: Path) -> dict[str, Any]:
    cases: dict[str, Any] = {}
    torch.save([1, 2], d / "list.pt")
    cases["a list"] = d / "list.pt"
    torch.save({1: torch.zeros(1)}, d / "intkey.pt")
    cases["an int key"] = d / "intkey.pt"
    torch.save({"fc.weight": 3, "fc.bias": torch.zeros(4)}, d / "nontensor.pt")
    cases["a non-tensor value"] = d / "nontensor.pt"
    torch.save(GOOD, d / "good.pt")
    data = (d / "good.pt").read_bytes()
    (d / "trunc.pt").write_bytes(data[: len(data) // 2])
    cases["a truncated torch file"] = d / "trunc.pt"
    save_file(GOOD, d / "good.safetensors")
    data = (d / "good.safetensors").read_bytes()
    (d / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    cases["a truncated safetensors file"] = d / "trunc.safetensors"
    for name, weight_map, shard in [("lacks", {"fc.weight": "a.safetensors", "fc.bias": "a.safetensors"}, None),
                                    ("dir", {"fc.weight": "adir", "fc.bias": "adir"}, "adir")]:
        sub = d / name
        sub.mkdir()
        save_file({"fc.weight": GOOD["fc.weight"]}, sub / "a.safetensors")
        if shard:
            (sub / shard).mkdir()
        (sub / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        cases[f"an index whose shard {name}"] = sub / "model.safetensors.index.json"
    big = d / "big"
    big.mkdir()
    (big / "model.safetensors.index.json").write_text('{"weight_map": {"fc.weight": ' + BIG + "}}")
    cases["an index with a huge integer"] = big / "model.safetensors.index.json"
    zero = d / "zero"
    zero.mkdir()
    os.symlink("/dev/zero", zero / "model.safetensors.index.json")
    cases["an index linked to /dev/zero"] = zero / "model.safetensors.index.json"
    fifo = d / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "model.safetensors.index.json")
    cases["an index that is a FIFO"] = fifo / "model.safetensors.index.json"
    (d / "empty").mkdir()
    cases["a directory with no checkpoint"] = d / "empty"
    cases["a dict with an int key"] = {1: torch.zeros(1)}
    return cases


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_malformed_checkpoints_are_weight_errors_naming_the_file(module: Any, tmp_path: Path) -> None:
    for what, weights in _bad_checkpoints(tmp_path).items():
        with pytest.raises(WeightError) as info:
            load_weights(module, weights)
        if isinstance(weights, Path):
            assert str(weights.parent) in str(info.value), (what, str(info.value))
    with pytest.raises(WeightError, match=r"fc\.bias"):
        load_weights(module, tmp_path / "lacks" / "model.safetensors.index.json")


def test_legacy_torch_save_files_load(module: Any, tmp_path: Path) -> None:
    path = tmp_path / "legacy.bin"
    torch.save(GOOD, path, _use_new_zipfile_serialization=False)
    load_weights(module, path)
    torch.testing.assert_close(module.fc.weight, GOOD["fc.weight"])
    torch.testing.assert_close(module.fc.bias, GOOD["fc.bias"])
