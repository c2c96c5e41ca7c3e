"""CLI paper cuts from issue 19: the check table fits an 80-column terminal, render takes --config, compile's
--target help names every backend, and LoadReport's repr is a summary."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

import nnspec
from nnspec.backends.base import names as backend_names
from nnspec.cli import app
from tests._small_models import VIT

ROOT = Path(__file__).resolve().parent.parent
GPT2 = str(ROOT / "examples" / "gpt2.yaml")


def test_check_table_fits_80_columns() -> None:
    run = CliRunner().invoke(app, ["check", GPT2], env={"COLUMNS": "80"})
    assert run.exit_code == 0, run.output
    widest = max(len(line) for line in run.stdout.splitlines())
    assert widest <= 80, widest
    assert "85,054,464" in run.stdout   # the repeat's parameter count, not cut off


def test_render_takes_a_config(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"n_layer": 3, "n_embd": 64, "n_head": 4, "vocab_size": 100, "n_positions": 32}))
    run = CliRunner().invoke(app, ["render", GPT2, "-o", str(tmp_path / "g.dot"), "--config", str(config)])
    assert run.exit_code == 0, run.output
    dot = (tmp_path / "g.dot").read_text()
    assert "×3" in dot and "×12" not in dot      # the config's 3 layers, not the spec's default 12


def test_compile_target_help_lists_every_backend() -> None:
    run = CliRunner().invoke(app, ["compile", "--help"], env={"COLUMNS": "200"})
    assert run.exit_code == 0
    line = next(ln for ln in run.stdout.splitlines() if "--target" in ln)
    assert all(name in line for name in backend_names()) and len(backend_names()) >= 2


def test_load_report_repr_summarises() -> None:
    torch.manual_seed(0)
    vit = nnspec.build(ROOT / "examples" / "vit.yaml", **VIT)
    report = nnspec.load_weights(vit, nnspec.save_weights(vit))
    text = repr(report)
    assert len(report.loaded) > 30 and len(text) < 300
    assert text.startswith(f"LoadReport({len(report.loaded)} loaded")


TYPO = """nnspec: 1
name: t
dims:
  d: 4
  n: 2
inputs:
  x: float32[B, d]
outputs:
  y: float32[B, d]
blocks:
  layer(x): |
    return linear(x, d, name=fc)
body: |
  y = repeat(n, layer, x, name=h)
weights:
  hf:
    h.{i}.fc.weight: model.h.{i}.fc.weight
    h.{i}.fc.bais: model.h.{i}.fc.bias
"""


def test_e027_points_at_the_misspelt_rule_and_offers_the_parameter() -> None:
    import pytest

    with pytest.raises(nnspec.SpecError) as info:
        nnspec.check(TYPO)
    err = info.value
    assert err.code == "E027" and (err.span.line, err.span.col) == (18, 5)   # the rule with the typo
    assert "did you mean 'h.{i}.fc.bias'" in str(err)
    without = TYPO.replace("    h.{i}.fc.bais: model.h.{i}.fc.bias\n", "")
    with pytest.raises(nnspec.SpecError) as info:
        nnspec.check(without)
    assert (info.value.span.line, info.value.span.col) == (16, 3) and "h.0.fc.bias" in str(info.value)
