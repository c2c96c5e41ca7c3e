"""`nnspec render`: formats, options, atomic writes, located errors, and missing external tools."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import nnspec
import nnspec.compiler.diagrams.raster as raster
from nnspec.cli import app
from nnspec.compiler.diagrams import block_graph, circuit_svg

ROOT = Path(__file__).resolve().parent.parent
GPT2 = str(ROOT / "examples" / "gpt2.yaml")
PNG = b"\x89PNG\r\n\x1a\n"


def run(*args: str | Path) -> Any:
    return CliRunner().invoke(app, ["render", *[str(a) for a in args]])


def _has_rasteriser() -> bool:
    try:
        import cairosvg  # noqa: F401
        return True
    except (ImportError, OSError):
        return shutil.which("rsvg-convert") is not None


needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")
needs_raster = pytest.mark.skipif(not _has_rasteriser(), reason="no SVG rasteriser (cairosvg or rsvg-convert)")


def _only(tmp_path: Path, *names: str) -> None:
    """Nothing but these files in the directory: no temporary file left behind."""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_graph_as_dot_is_the_block_graph(tmp_path: Path) -> None:
    out = tmp_path / "g.dot"
    result = run(GPT2, "--expand", "1", "-o", out)
    assert result.exit_code == 0, result.output
    assert out.read_text() == block_graph(nnspec.check(GPT2).model, expand=1)
    _only(tmp_path, "g.dot")


@needs_dot
def test_graph_as_svg(tmp_path: Path) -> None:
    out = tmp_path / "g.svg"
    assert run(GPT2, "--style", "graph", "--format", "svg", "-o", out).exit_code == 0
    assert ET.parse(out).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    assert out.stat().st_mode & 0o777 != 0o600
    _only(tmp_path, "g.svg")


@needs_dot
@needs_raster
def test_graph_as_png(tmp_path: Path) -> None:
    out = tmp_path / "g.png"
    assert run(GPT2, "-o", out).exit_code == 0
    assert out.read_bytes().startswith(PNG)


def test_circuit_svg_of_a_block(tmp_path: Path) -> None:
    out = tmp_path / "attn.svg"
    result = run(GPT2, "--style", "circuit", "--block", "attention", "-o", out)
    assert result.exit_code == 0, result.output
    assert out.read_text() == circuit_svg(nnspec.check(GPT2).model, block="attention", wrap=True)   # rows by default


@needs_raster
def test_circuit_png(tmp_path: Path) -> None:
    out = tmp_path / "c.png"
    assert run(GPT2, "--style", "circuit", "--block", "mlp", "--scale", "1", "-o", out).exit_code == 0
    assert out.read_bytes().startswith(PNG)
    _only(tmp_path, "c.png")


def test_output_is_replaced_whole(tmp_path: Path) -> None:
    out = tmp_path / "c.svg"
    out.write_text("old")
    assert run(GPT2, "--style", "circuit", "--set", "n_layer=2", "-o", out).exit_code == 0
    assert out.read_text().startswith("<?xml")
    _only(tmp_path, "c.svg")


def test_a_bad_spec_is_a_located_error_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(GPT2).read_text().replace("head_dim: n_embd / n_head", "head_dim: n_embd / 7"))
    result = run(bad, "-o", tmp_path / "x.svg")
    assert result.exit_code == 1
    assert f"{bad}:11:13: error[E014]" in result.stderr
    _only(tmp_path, "bad.yaml")


@pytest.mark.parametrize(("args", "message"), [
    (["--style", "circuit", "--format", "dot"], "--format takes svg, png or html for --style circuit"),
    (["--style", "pretty"], "--style takes 'graph' or 'circuit'"),
    (["--block", "nope"], "no block named 'nope' in gpt2 (blocks: attention, layer, mlp)"),
    (["--expand", "-1"], "--expand takes a level of 0 or more"),
    (["--format", "gif"], "--format takes svg, png, dot or html"),
])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = run(GPT2, *args, "-o", tmp_path / "x.svg")
    assert result.exit_code == 2
    assert message in result.stderr
    _only(tmp_path)


def test_missing_dot_is_a_clear_error_that_still_writes_the_dot(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raster.shutil, "which", lambda name: None)
    result = run(GPT2, "-o", tmp_path / "g.svg")
    assert result.exit_code == 2
    assert "graphviz's `dot` program is not installed" in result.stderr and "g.dot" in result.stderr
    assert (tmp_path / "g.dot").read_text() == block_graph(nnspec.check(GPT2).model)
    _only(tmp_path, "g.dot")


def test_missing_rasteriser_is_a_clear_error_that_still_writes_the_svg(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins
    real_import = builtins.__import__

    def no_cairosvg(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "cairosvg":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cairosvg)
    monkeypatch.setattr(raster.shutil, "which", lambda name: None)
    result = run(GPT2, "--style", "circuit", "--block", "mlp", "-o", tmp_path / "c.png")
    assert result.exit_code == 2
    assert "no SVG rasteriser" in result.stderr
    assert (tmp_path / "c.svg").read_text().startswith("<?xml")
    _only(tmp_path, "c.svg")
