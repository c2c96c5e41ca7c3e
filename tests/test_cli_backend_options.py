"""`--backend-option NAME[=VALUE]` on `nnspec compile` (and `generate`/`export`): the backend options of
`nnspec.build(backend_options=...)` from the command line, over the level's choice; bad names/values exit 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nnspec.cli import app
from nnspec.commands.backend_options import parse
from nnspec.compiler.elaborate import UsageError

EXAMPLES = Path(__file__).parent.parent / "examples"
MAMBA = ["--set", "hidden_size=16", "--set", "state_size=4", "--set", "num_hidden_layers=1", "--set", "vocab_size=32",
         "--set", "time_step_rank=2"]
GPT2 = ["--set", "n_embd=16", "--set", "n_head=2", "--set", "n_layer=1", "--set", "vocab_size=32",
        "--set", "n_positions=16"]


def compile_source(tmp_path: Path, spec: str, *args: str) -> str:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["compile", str(EXAMPLES / spec), "-o", str(out), *args])
    assert result.exit_code == 0, result.output
    (path,) = out.glob("*.py")
    return path.read_text()


def test_parse_values() -> None:
    assert parse(None, "torch") == {}
    assert parse(["parallel_scan", "sdpa=off", "fused_linear = TRUE", "regroup_contractions=0"], "torch") == {
        "parallel_scan": True, "sdpa": False, "fused_linear": True, "regroup_contractions": False}


@pytest.mark.parametrize(("item", "said"), [("nope", "has no option 'nope'; its options: fused_linear ("),
                                            ("sdpa=maybe", "takes true or false"), ("=1", "takes NAME or NAME=VALUE")])
def test_parse_refuses(item: str, said: str) -> None:
    with pytest.raises(UsageError, match=re.escape(said)):
        parse([item], "triton")


def test_compile_turns_an_option_on(tmp_path: Path) -> None:
    """parallel_scan is on at no level: only the flag asks for the chunked scan."""
    assert "affine_scan(" not in compile_source(tmp_path / "a", "mamba.yaml", "-O2", *MAMBA)
    assert "affine_scan(" in compile_source(tmp_path / "b", "mamba.yaml", "-O2", *MAMBA,
                                            "--backend-option", "parallel_scan")


def test_compile_turns_a_level_option_off(tmp_path: Path) -> None:
    assert "F.scaled_dot_product_attention(" in compile_source(tmp_path / "a", "gpt2.yaml", "-O2", *GPT2)
    source = compile_source(tmp_path / "b", "gpt2.yaml", "-O2", *GPT2, "--backend-option", "sdpa=false",
                            "--backend-option", "fused_linear=off")
    assert "F.scaled_dot_product_attention(" not in source and "F.softmax(" in source
    assert "_linear_pointwise" not in source


def test_compile_unknown_option_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["compile", str(EXAMPLES / "gpt2.yaml"), "-o", str(tmp_path / "out"),
                                      "--backend-option", "fast=1"])
    assert result.exit_code == 2
    assert "no option 'fast'" in result.output and "parallel_scan" in result.output
    assert not (tmp_path / "out").exists()
