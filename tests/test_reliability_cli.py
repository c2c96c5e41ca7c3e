"""Issue 22, items 12-14 and 18-20: the CLI's own inputs (file names, flags, signals) and an optional input's
default. Each hostile input is written for the test; the outcome is a located error (exit 1), a usage error
(exit 2) or the right output, never exit 3 or a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import nnspec
from nnspec import atomic
from nnspec.cli import app
from nnspec.compiler.analysis import parse_size
from nnspec.errors import SpecError, visible

SPEC = """nnspec: 1
name: m
dims:
  d: 4
inputs:
  x: float32[batch, d]
outputs:
  y: float32[batch, d]
body: |
  y = relu(x)
"""


def cli(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(SPEC)
    return path


# ---- 12: render's output and --scale ----
@pytest.mark.parametrize("scale", ["0", "-1", "nan", "inf", "1e6"])
def test_render_refuses_a_bad_scale(spec: Path, tmp_path: Path, scale: str) -> None:
    result = cli("render", spec, "-o", tmp_path / "m.png", "--scale", scale)
    assert result.exit_code == 2 and "--scale" in result.output, result.output
    assert not (tmp_path / "m.png").exists()


def test_render_onto_a_directory_is_a_usage_error(spec: Path, tmp_path: Path) -> None:
    (tmp_path / "out.svg").mkdir()
    result = cli("render", spec, "-o", tmp_path / "out.svg", "--style", "circuit")
    assert result.exit_code == 2 and "directory" in result.output, result.output


def test_render_write_errors_are_usage_errors(spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(path: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(atomic, "write_atomic", full)
    result = cli("render", spec, "-o", tmp_path / "m.svg", "--style", "circuit")
    assert result.exit_code == 2 and "No space left on device" in result.output, result.output


def test_a_png_cairo_cannot_draw_falls_back_to_svg(spec: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from nnspec.compiler import diagrams

    class CairoError(Exception):   # what cairocffi raises for an image past 32,767 pixels
        pass

    def too_big(svg: str, scale: float) -> bytes:
        raise CairoError("INVALID_SIZE")
    monkeypatch.setattr(diagrams, "svg_to_png", too_big)
    result = cli("render", spec, "-o", tmp_path / "m.png", "--style", "circuit", "--scale", "16")
    assert result.exit_code == 2 and "INVALID_SIZE" in result.output, result.output
    assert (tmp_path / "m.svg").read_text().lstrip().startswith("<")


# ---- 13: user strings are never rich markup ----
@pytest.mark.parametrize("name", ["[/x].yaml", "[red]x.yaml", "[bold]"])
def test_file_names_that_look_like_markup_print_as_written(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)     # `[/x].yaml` is x].yaml in a directory named `[`
    path.write_text(SPEC)
    result = cli("check", path)
    assert result.exit_code == 0, result.output
    assert name in result.output
    assert "x: float32[batch, d]" in result.output     # a lowercase first axis is kept


# ---- 14: control characters in messages ----
def test_control_characters_from_keys_are_escaped_in_messages(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(SPEC.replace("  d: 4", '  "d\\e]0;pwned\\a": 4'))
    result = cli("check", path)
    assert result.exit_code == 1
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "\\x1b]0;pwned\\x07" in result.output
    assert visible("a\x1b[2Jb\x9bc\n") == "a\\x1b[2Jb\\x9bc\n"


def test_control_characters_in_a_set_name_are_escaped() -> None:
    result = cli("check", "examples/gpt2.yaml", "--set", "a\x1b[2Jb=3")
    assert result.exit_code == 2 and "\x1b" not in result.output and "\\x1b[2J" in result.output


# ---- 18: optional-input defaults against the input's dtype ----
@pytest.mark.parametrize("default", [".nan", "-.inf", "1e20", "1.5", "true", "9223372036854775808"])
def test_int_input_defaults_must_be_int64_values(default: str) -> None:
    text = SPEC.replace("  x: float32[batch, d]", f"  x: float32[batch, d]\n  m: {{type: \"int64[batch]\", "
                        f"default: {default}}}")
    with pytest.raises(SpecError) as info:
        nnspec.check(text)
    assert info.value.code == "E004" and info.value.span is not None and info.value.span.line == 7


def test_good_defaults_are_accepted() -> None:
    for dtype, default in [("int64", "1"), ("int64", "-9223372036854775808"), ("bool", "true"),
                           ("float32", "-.inf"), ("int32", "0")]:
        nnspec.check(SPEC.replace("  x: float32[batch, d]", f"  x: float32[batch, d]\n  m: {{type: \"{dtype}[batch]\","
                                  f" default: {default}}}"))


# ---- 19: signals during a write ----
def test_sigterm_during_a_write_removes_the_temp_file(tmp_path: Path) -> None:
    script = ("import sys, time\nfrom pathlib import Path\nfrom nnspec.atomic import staged\n"
              "with staged([Path(sys.argv[1]) / 'm.py']) as (tmp,):\n"
              "    Path(tmp).write_text('partial')\n    print('ready', flush=True)\n    time.sleep(60)\n")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 128 + sig
        assert os.listdir(tmp_path) == []


def test_stale_temp_files_of_ours_are_swept(tmp_path: Path) -> None:
    stale, fresh, other = tmp_path / ".m.py.abc123.tmp", tmp_path / ".m.py.def456.tmp", tmp_path / ".x.tmp"
    for p in (stale, fresh, other):
        p.write_text("partial")
    old = time.time() - 2 * atomic.STALE_S
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    atomic.write_atomic(tmp_path / "m.py", b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.py.def456.tmp", ".x.tmp", "m.py"]


# ---- 20: flags ----
@pytest.mark.parametrize("name, what", [("input_ids", "input"), ("logits", "output"), ("layer", "block"),
                                        ("relu", "built-in function")])
def test_set_on_a_name_that_is_not_a_dim_is_a_usage_error(name: str, what: str) -> None:
    result = cli("check", "examples/gpt2.yaml", "--set", f"{name}=3")
    assert result.exit_code == 2 and what in result.output, result.output


@pytest.mark.parametrize("lora, says", [("*.c_attn:99999999999", "size limit"), ("*.c_attn:8:alpha=nan", "finite"),
                                        ("*.c_attn:8:alpha=inf", "finite")])
def test_lora_limits(lora: str, says: str) -> None:
    result = cli("check", "examples/gpt2.yaml", "--lora", lora)
    assert result.exit_code == 2 and says in result.output, result.output


def test_max_memory_parser_is_linear_in_spaces(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_size(" 512 MiB ") == 512 << 20
    for text in ["1" + " " * 50_000 + "x", " " * 50_000]:
        with pytest.raises(ValueError) as info:
            parse_size(text)
        assert len(str(info.value)) < 300


def test_an_unknown_key_holding_a_lone_surrogate_is_located() -> None:
    with pytest.raises(SpecError) as info:
        nnspec.check(SPEC.replace("dims:", 'zzz: "\\ud800"\ndims:'))
    assert info.value.span is not None and info.value.span.line == 3
    info.value.render().encode("utf-8")
