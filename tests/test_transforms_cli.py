"""`nnspec check` with transform flags: `--explain`, `--json`, the recomputed report, usage errors; goldens of
the transformed IR (regenerate with NNSPEC_REGEN=1, then review the diff)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _transforms_helpers import GPT2, checked
from typer.testing import CliRunner

from nnspec.cli import app
from nnspec.compiler.printer import print_model
from nnspec.compiler.transforms import apply

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "transforms"
SMALL = ["--set", "n_layer=4", "--set", "n_embd=32", "--set", "n_head=4", "--set", "vocab_size=96",
         "--set", "n_positions=64"]


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def _check(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["check", "examples/gpt2.yaml", *SMALL, *args], env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def test_explain_prints_each_transform_and_the_report_is_recomputed() -> None:
    code, out, _ = _check("--drop", "h.1.attn,h.2.mlp", "--lora", "*.c_attn:4", "--dtype", "bf16", "--explain")
    assert code == 0
    lines = out[out.index("transforms:"):].splitlines()
    # a layer is 12,704 parameters: ln_1 64, c_attn 3,168, c_proj 1,056 | ln_2 64, c_fc 4,224, c_proj 4,128
    assert lines[1].startswith("  drop h.1.attn h.2.mlp: params 56,000 -> 43,296 (-12,704), FLOPs ")
    # A 4x32 + B 96x4 on the three c_attn left
    assert lines[2].startswith("  lora *.c_attn:4: params 43,296 -> 44,832 (+1,536), FLOPs ")
    assert lines[2].endswith("trainable 1,536")
    assert lines[3] == "  dtype bfloat16: params 44,832 -> 44,832 (+0), trainable 1,536"
    assert "params   44,832" in out


def test_explain_without_transforms_says_so() -> None:
    code, out, _ = _check("--explain")
    assert code == 0 and out.rstrip().endswith("transforms: none")


def test_json_lists_the_transforms() -> None:
    code, out, _ = _check("--share", "h:2", "--explain", "--json")
    payload = json.loads(out)
    assert code == 0 and payload["model"]["params"] == 56_000 - 2 * 12_704
    assert payload["transforms"] == ["share h:2: params 56,000 -> 30,592 (-25,408)"]


@pytest.mark.parametrize(("args", "message"), [
    (["--drop", "h.1.ln_1"], "nnspec: error: --drop h.1.ln_1: h.1.ln_1 is not a residual branch"),
    (["--share", "h:3"], "nnspec: error: --share h:3: 3 groups do not divide the 4 iterations of h"),
    (["--lora", "*.q_proj:4"], "nnspec: error: --lora *.q_proj:4: the pattern matches no linear"),
    (["--dtype", "int4"], "nnspec: error: --dtype takes bf16 or fp16, got 'int4'"),
    (["--slice", "64"], "nnspec: error: --slice 64: the width must be between 1 and the stream's 32"),
])
def test_a_flag_that_does_not_apply_is_a_usage_error(args: list[str], message: str) -> None:
    code, out, err = _check(*args)
    assert code == 2 and out == "" and err.startswith(message), err


CASES = {
    "gpt2_drop_lora": {"drop": ["h.1.attn"], "lora": ["h.2.*.c_fc:2"]},
    "gpt2_share_slice_bf16": {"share": ["h:2"], "slice_width": 24, "dtype": "bf16"},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_ir(case: str) -> None:
    model, lines = apply(checked(GPT2), **CASES[case])
    text = "\n".join(f"# {line}" for line in lines) + "\n" + print_model(model)
    path = GOLDEN / f"{case}.ir"
    if os.environ.get("NNSPEC_REGEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def test_apply_leaves_its_input_alone() -> None:
    model = checked(GPT2)
    before = print_model(model)
    apply(model, drop=["h.1.attn"], lora=["*.c_fc:2"], slice_width=16, dtype="bf16")
    assert print_model(model) == before and model.transforms == [] and model.weight_maps
