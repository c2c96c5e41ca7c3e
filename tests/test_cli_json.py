"""`nnspec compile --json` and `nnspec render --json`: machine-readable accounts of what was written, checked
against the files on disk and the passes the level runs (nnspec.compiler.passes.PIPELINES)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from nnspec.cli import app
from nnspec.compiler.passes import PIPELINES

ROOT = Path(__file__).resolve().parent.parent
GPT2 = str(ROOT / "examples" / "gpt2.yaml")


def test_compile_json_lists_files_passes_kernels_and_fallbacks(tmp_path: Path) -> None:
    run = CliRunner().invoke(app, ["compile", GPT2, "-o", str(tmp_path), "--target", "triton", "-O2", "--json",
                                   "--set", "n_layer=1"])
    assert run.exit_code == 0, run.output
    out = json.loads(run.stdout)
    assert out["ok"] and out["written"] == [str(tmp_path / "gpt2.py")] and (tmp_path / "gpt2.py").is_file()
    (model,) = out["models"]
    assert model["passes"] == PIPELINES[2] and model["target"] == "triton" and model["class"] == "Gpt2"
    source = (tmp_path / "gpt2.py").read_text()
    assert model["kernels"] and all(k.split()[0] in ("kernel", "template") for k in model["kernels"])
    named = [k.split()[1].rstrip(":") for k in model["kernels"] if k.startswith("kernel ")]
    assert named and all(name in source for name in named)   # each kernel named is in the file
    assert any(f.startswith("linear") for f in model["fallbacks"])   # matmuls stay with torch (cuBLAS)
    assert any("fuse-linear" in r or "attention" in r for r in model["rewrites"])


def test_compile_json_spec_error_is_the_check_diagnostics(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nnspec: 1\nname: bad\ninputs:\n  x: float32[B, d]\noutputs:\n  y: float32[B, d]\nbody: |\n"
                   "  y = nope(x)\n")
    run = CliRunner().invoke(app, ["compile", str(bad), "-o", str(tmp_path / "out"), "--json"])
    assert run.exit_code == 1
    out = json.loads(run.stdout)
    assert out["ok"] is False and out["diagnostics"][0]["span"]["line"] == 8 and out["diagnostics"][0]["code"] == "E016"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_render_json(tmp_path: Path) -> None:
    run = CliRunner().invoke(app, ["render", GPT2, "-o", str(tmp_path / "g.dot"), "--json"])
    assert run.exit_code == 0, run.output
    out = json.loads(run.stdout)
    assert out["ok"] and out["written"] == [str(tmp_path / "g.dot")] and out["format"] == "dot"
    assert out["bytes"] == (tmp_path / "g.dot").stat().st_size and out["model"] == "gpt2"
