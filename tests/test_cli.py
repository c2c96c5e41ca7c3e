"""The `nnspec` command line: exit codes, located messages on stderr, `--json`, `--set`, `--emit`, `--config`.

Most tests run the CLI in-process with typer's CliRunner; one runs the installed `nnspec` for real.
docs/cli.md documents what is asserted here (exit codes 0/1/2/3 and the `--json` schema).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sympy
from typer.testing import CliRunner

import nnspec
import nnspec.cli
from nnspec.cli import app
from nnspec.compiler.printer import print_model

ROOT = Path(__file__).parent.parent
GPT2 = "examples/gpt2.yaml"  # relative: the tests run from the repository root (see the fixture below)

# GPT-2 by hand: wte 50257*768, wpe 1024*768, per layer 7,087,872 (ln_1, ln_2: 2*1536; c_attn 768*2304+2304;
# attn c_proj 768*768+768; c_fc 768*3072+3072; mlp c_proj 3072*768+768), ln_f 1536; the head is tied.
LAYER = 2 * 1536 + (768 * 2304 + 2304) + (768 * 768 + 768) + (768 * 3072 + 3072) + (3072 * 768 + 768)


def gpt2_params(n_layer: int) -> int:
    return 50257 * 768 + 1024 * 768 + n_layer * 7_087_872 + 1536


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def run(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def run_json(*args: str | Path) -> tuple[int, dict[str, Any]]:
    result = run(*args, "--json")
    return result.exit_code, json.loads(result.stdout)


def test_layer_formula() -> None:
    assert LAYER == 7_087_872 and gpt2_params(12) == 124_439_808


# ---- the real command ----------------------------------------------------------------------------------

def test_real_subprocess_check_gpt2() -> None:
    exe = shutil.which("nnspec")
    cmd = [exe] if exe else [sys.executable, "-m", "nnspec.cli"]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([*cmd, "check", GPT2], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "124,439,808" in proc.stdout
    assert proc.stderr == ""


def test_real_subprocess_spec_error_exit_1(tmp_path: Path) -> None:
    exe = shutil.which("nnspec")
    cmd = [exe] if exe else [sys.executable, "-m", "nnspec.cli"]
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / GPT2).read_text().replace("n_layer: 12", "n_layer: -1"))
    proc = subprocess.run([*cmd, "check", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"{bad}:9:12: error[E023]")


# ---- success -------------------------------------------------------------------------------------------

def test_check_prints_the_table() -> None:
    result = run("check", GPT2)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("wte", "wpe", "layer x12", "ln_f", "tied to wte.weight", "B x T x n_embd", "B x T x 768",
                 "38,597,376", "85,054,464", "total", "124,439,808", "guard    T <= n_positions"):
        assert text in out, text
    assert result.stderr == ""


def test_set_changes_the_parameter_count() -> None:
    result = run("check", GPT2, "--set", "n_layer=2")
    assert result.exit_code == 0, result.output
    assert gpt2_params(2) == 53_561_088
    assert "53,561,088" in result.stdout
    assert "124,439,808" not in result.stdout
    assert "layer x2" in result.stdout


def test_set_several_values_and_types() -> None:
    code, payload = run_json("check", GPT2, "--set", "n_layer=1", "--set", "activation=relu",
                             "--set", "layer_norm_epsilon=1e-6", "--set", "B=2")
    assert code == 0
    assert payload["model"]["params"] == gpt2_params(1)
    assert payload["model"]["free_dims"] == ["T"]
    rows = {r["name"]: r for r in payload["model"]["rows"]}
    assert rows["wte"]["concrete"] == "2 x T x 768"


# ---- --json --------------------------------------------------------------------------------------------

def test_json_success_schema() -> None:
    code, payload = run_json("check", GPT2)
    assert code == 0
    assert set(payload) == {"version", "ok", "diagnostics", "model"}
    assert payload["version"] == 1 and payload["ok"] is True and payload["diagnostics"] == []
    model = payload["model"]
    assert set(model) == {"name", "params", "flops", "free_dims", "guards", "inputs", "outputs", "rows"}
    assert model["name"] == "gpt2" and model["params"] == 124_439_808
    assert model["free_dims"] == ["B", "T"] and model["guards"] == ["T <= n_positions"]
    assert model["inputs"] == {"input_ids": "int64[B, T]", "attention_mask": "int64[B, T]",
                               "position_ids": "int64[B, T]"}
    assert model["outputs"] == {"logits": "float32[B, T, vocab_size]"}
    B, T = sympy.symbols("B T", integer=True, positive=True)
    flops = sympy.sympify(model["flops"], locals={"B": B, "T": T})
    assert sympy.expand(flops - nnspec.check(GPT2).flops) == 0
    rows = {r["name"]: r for r in model["rows"]}
    assert list(rows) == ["wte", "wpe", "h", "ln_f", "logits"]
    for row in model["rows"]:
        assert set(row) == {"name", "kind", "shape", "concrete", "params", "flops"}
        assert isinstance(row["params"], int) and isinstance(row["flops"], str)
    assert rows["h"] == {**rows["h"], "kind": "layer x12", "params": 12 * LAYER,
                         "shape": "B x T x n_embd", "concrete": "B x T x 768"}
    assert sum(r["params"] for r in model["rows"]) == model["params"]


def test_json_error_schema(tmp_path: Path) -> None:
    code, payload = run_json("check", "tests/golden/errors/dim_negative.yaml")
    assert code == 1
    assert payload == {
        "version": 1, "ok": False,
        "diagnostics": [{
            "severity": "error", "code": "E023", "message": "dim 'n_inner' = -64 is out of range (1 to 2^32)",
            "span": {"file": "tests/golden/errors/dim_negative.yaml", "line": 7, "col": 12,
                     "end_line": 7, "end_col": 15},
            "notes": [],
        }],
    }


def test_json_error_with_a_note() -> None:
    code, payload = run_json("check", "tests/golden/errors/duplicate_body.yaml")
    assert code == 1
    (diag,) = payload["diagnostics"]
    assert diag["code"] == "E002" and (diag["span"]["line"], diag["span"]["col"]) == (11, 1)
    (note,) = diag["notes"]
    assert note["message"] == "first defined here"
    assert (note["span"]["file"], note["span"]["line"], note["span"]["col"]) == \
        ("tests/golden/errors/duplicate_body.yaml", 9, 1)


def test_json_examples_in_docs_are_real_output() -> None:
    """docs/cli.md shows real `--json` runs; they must still be what nnspec prints."""
    doc = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    blocks = [json.loads(b.split("\n```")[0]) for b in doc.split("```json\n")[1:] if "\n    ...\n" not in b]
    assert blocks[0] == run_json("check", GPT2)[1]
    assert blocks[1] == run_json("check", "tests/golden/errors/duplicate_body.yaml")[1]


def test_json_with_emit_ir() -> None:
    code, payload = run_json("check", GPT2, "--emit", "ir")
    assert code == 0
    assert payload["ir"] == print_model(nnspec.check(GPT2).model)


# ---- spec errors: exit 1 -------------------------------------------------------------------------------

def test_spec_error_exit_1_with_location(tmp_path: Path) -> None:
    spec = tmp_path / "typo.yaml"
    text = (ROOT / GPT2).read_text().replace("return x\n", "return xx\n", 1)
    spec.write_text(text)
    lines = text.split("\n")
    line = next(i for i, t in enumerate(lines, 1) if t == "    return xx")
    result = run("check", spec)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"{spec}:{line}:12: error[E011]: undefined name 'xx'")
    assert "    return xx\n" in result.stderr and "^^" in result.stderr


@pytest.mark.parametrize(("golden", "where"), [
    ("dim_negative.yaml", "7:12: error[E023]"),
    ("missing_version.yaml", "3:1: error[E008]"),
    ("tab_in_dims.yaml", "error[E006]"),
])
def test_golden_errors_through_the_cli(golden: str, where: str) -> None:
    path = f"tests/golden/errors/{golden}"
    result = run("check", path)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{path}:") and where in result.stderr.splitlines()[0]


def test_spec_error_from_set_is_exit_1() -> None:
    result = run("check", GPT2, "--set", "T=2048")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{GPT2}:27:5: error[E015]")


# ---- usage errors: exit 2 ------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("--set", "n_layers=2"),                # a typo: no such dim, option or free dim
    ("--set", "bogus=1"),
    ("--set", "n_layer"),                   # no '='
    ("--set", "=3"),
    ("--set", "n_layer=2.5"),               # a dim takes an integer
    ("--set", "activation=swish"),          # not one of the choices
    ("--set", "tie_word_embeddings=3"),     # a boolean option
    ("--emit", "onnx"),
    ("--config", "no/such/config.json"),
])
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = run("check", GPT2, *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("nnspec: error: ") or "Usage:" in result.stderr


def test_set_typo_suggests_the_name() -> None:
    result = run("check", GPT2, "--set", "n_layers=2")
    assert "did you mean n_layer?" in result.stderr


def test_missing_spec_file_exit_2() -> None:
    result = run("check", "examples/no_such_model.yaml")
    assert result.exit_code == 2
    assert result.stderr == ("nnspec: error: cannot read spec 'examples/no_such_model.yaml': "
                             "No such file or directory\n")


def test_directory_as_spec_or_config_is_a_usage_error(tmp_path: Path) -> None:
    assert run("check", tmp_path).exit_code == 2
    result = run("check", GPT2, "--config", tmp_path)
    assert result.exit_code == 2 and "cannot read config" in result.stderr


def test_unknown_option_is_a_usage_error() -> None:
    assert run("check", GPT2, "--frobnicate").exit_code == 2


# ---- --emit ir -----------------------------------------------------------------------------------------

def test_emit_ir_prints_the_ir() -> None:
    result = run("check", GPT2, "--set", "n_layer=1", "--emit", "ir")
    assert result.exit_code == 0
    ir = print_model(nnspec.check(GPT2, n_layer=1).model)
    assert ir in result.stdout
    assert "# nnspec IR for gpt2" in result.stdout
    assert "model gpt2(%input_ids: int64[B, T], %attention_mask: int64[B, T], %position_ids: int64[B, T])" \
        in result.stdout
    assert "repeat[block=\"layer\", scope=\"h\", count=1, shared=False]" in result.stdout


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0 and result.stdout == f"nnspec {nnspec.__version__}\n"


# ---- --config: a Hugging Face config.json --------------------------------------------------------------

SMALL = {"n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 100, "n_positions": 32}


def small_params() -> int:
    d = 64
    layer = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return 100 * d + 32 * d + 2 * layer + 2 * d


@pytest.fixture
def hf_config() -> dict[str, Any]:
    transformers = pytest.importorskip("transformers")
    return transformers.GPT2Config(**SMALL).to_dict()


def write_config(tmp_path: Path, config: dict[str, Any]) -> tuple[Path, list[str]]:
    path = tmp_path / "config.json"
    text = json.dumps(config, indent=2)
    path.write_text(text)
    return path, text.split("\n")


def key_line(lines: list[str], key: str) -> int:
    """1-based line of a top-level key in `json.dumps(indent=2)` output (the key is at column 3)."""
    return next(i for i, t in enumerate(lines, 1) if t.startswith(f'  "{key}":'))


def test_config_maps_onto_dims_and_options(tmp_path: Path, hf_config: dict[str, Any]) -> None:
    path, lines = write_config(tmp_path, hf_config)
    code, payload = run_json("check", GPT2, "--config", path)
    assert code == 0, payload
    assert payload["ok"] is True
    assert payload["model"]["params"] == small_params() == 108_544
    warned = {}
    for diag in payload["diagnostics"]:
        assert diag["severity"] == "warning"
        key = diag["message"].split("'")[1]
        assert diag["message"] == f"config key '{key}' is not used by this spec"
        assert diag["span"]["file"] == str(path)
        assert (diag["span"]["line"], diag["span"]["col"]) == (key_line(lines, key), 3)
        warned[key] = diag
    spec = nnspec.check(GPT2).spec
    important = {*spec.dims, *spec.options, "activation_function", *spec.hf_require, *spec.hf_ignore}
    assert not warned.keys() & important, sorted(warned.keys() & important)
    # what is left is PretrainedConfig bookkeeping, e.g. id2label/label2id, that GPT-2's spec does not list
    assert set(warned) <= set(hf_config)


def test_config_table_and_warnings_on_stderr(tmp_path: Path, hf_config: dict[str, Any]) -> None:
    path, _ = write_config(tmp_path, {**hf_config, "my_note": 1})
    result = run("check", GPT2, "--config", path)
    assert result.exit_code == 0
    assert "108,544" in result.stdout and "layer x2" in result.stdout and "B x T x 64" in result.stdout
    assert f"{path}:" in result.stderr and "warning: config key 'my_note' is not used by this spec" in result.stderr
    assert "error" not in result.stderr


def test_unknown_harmless_key_is_a_warning(tmp_path: Path, hf_config: dict[str, Any]) -> None:
    path, lines = write_config(tmp_path, {**hf_config, "my_note": 1})
    code, payload = run_json("check", GPT2, "--config", path)
    assert code == 0 and payload["ok"] is True
    notes = [d for d in payload["diagnostics"] if "'my_note'" in d["message"]]
    assert notes == [{"severity": "warning", "message": "config key 'my_note' is not used by this spec",
                      "span": {"file": str(path), "line": key_line(lines, "my_note"), "col": 3,
                               "end_line": key_line(lines, "my_note"), "end_col": 12}}]


@pytest.mark.parametrize(("extra", "key", "words"), [
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling", "changes the computation"),
    ({"activation_function": "quick_gelu"}, "activation_function", "'quick_gelu' is not supported"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx",
     "implements only scale_attn_by_inverse_layer_idx=false"),
    ({"attention_bias": True}, "attention_bias", "changes the computation"),
    ({"hidden_act": "gelu"}, "hidden_act", "changes the computation"),
    ({"n_layer": 2.5}, "n_layer", "must be an integer"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings", "wrong type"),
])
def test_config_keys_the_spec_cannot_honour(tmp_path: Path, hf_config: dict[str, Any], extra: dict[str, Any],
                                            key: str, words: str) -> None:
    path, lines = write_config(tmp_path, {**hf_config, **extra})
    line = key_line(lines, key)
    result = run("check", GPT2, "--config", path)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"{path}:{line}:3: error[E022]: "), result.stderr
    assert words in first
    code, payload = run_json("check", GPT2, "--config", path)
    assert code == 1 and payload["ok"] is False
    err = payload["diagnostics"][-1]
    assert err["code"] == "E022" and err["span"]["file"] == str(path)
    assert (err["span"]["line"], err["span"]["col"], err["span"]["end_col"]) == (line, 3, 3 + len(key) + 2)


def test_config_error_notes_the_spec(tmp_path: Path, hf_config: dict[str, Any]) -> None:
    path, _ = write_config(tmp_path, {**hf_config, "scale_attn_by_inverse_layer_idx": True})
    result = run("check", GPT2, "--config", path)
    assert f"{GPT2}:" in result.stderr and "note: required by the spec here" in result.stderr


def test_config_key_found_at_the_top_level_not_nested(tmp_path: Path, hf_config: dict[str, Any]) -> None:
    config = {"text_config": {"rope_scaling": None}, **hf_config, "rope_scaling": {"type": "linear"}}
    path, lines = write_config(tmp_path, config)
    result = run("check", GPT2, "--config", path)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{path}:{key_line(lines, 'rope_scaling')}:3: error[E022]")


def test_config_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "n_layer": 2,\n}\n')
    result = run("check", GPT2, "--config", path)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{path}:3:1: error[E022]: config is not valid JSON")


def test_config_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("[1, 2]\n")
    result = run("check", GPT2, "--config", path)
    assert result.exit_code == 1 and "config must be a JSON object" in result.stderr


def test_config_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b'{"n_layer": 2,\n "x": "\xff"}')
    result = run("check", GPT2, "--config", path)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{path}:2:8: error[E006]")


# ---- internal errors: exit 3 ---------------------------------------------------------------------------

def test_internal_error_exit_3_please_report(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated bug in the analysis")

    monkeypatch.setattr(nnspec.compiler.check, "summarize", broken)
    monkeypatch.setattr(sys, "argv", ["nnspec", "check", GPT2])
    with pytest.raises(SystemExit) as info:
        nnspec.cli.main()
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert "internal error" in err and "please report" in err
    assert "RuntimeError: simulated bug in the analysis" in err  # the trace to report


def test_main_passes_ordinary_exit_codes_through(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    for argv, code in [(["check", GPT2], 0), (["check", "tests/golden/errors/dim_negative.yaml"], 1),
                       (["check", "nope.yaml"], 2)]:
        monkeypatch.setattr(sys, "argv", ["nnspec", *argv])
        with pytest.raises(SystemExit) as info:
            nnspec.cli.main()
        assert (info.value.code or 0) == code, argv
    assert "please report" not in capsys.readouterr().err
