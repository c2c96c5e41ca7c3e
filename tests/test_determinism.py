"""Outputs are deterministic and atomic (issue 8).

- `nnspec check --json --emit ir`, and where the commands exist `nnspec render` (DOT, SVG) and `nnspec compile`
  (-O0 and -O2), print or write byte-identical output across processes with PYTHONHASHSEED=0, 1 and random:
  nothing depends on set or dict-of-hash order, object ids or the clock.
- A failing `render`, `compile` or `save_weights` leaves no partial file, no temporary file, and no changed old
  file.

Each seed runs every command once in one subprocess (the three run side by side) to keep the cost down.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nnspec.cli import app

ROOT = Path(__file__).parent.parent
SPECS = sorted(str(p.relative_to(ROOT)) for p in [*ROOT.glob("examples/*.yaml"), *ROOT.glob("examples/small/*.yaml")])
DRAWN = ["examples/gpt2.yaml", "examples/small/moe.yaml", "examples/small/window_attention.yaml"]  # render, compile


def commands() -> set[str]:
    return {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}


# Run inside each subprocess: every command on every spec, the outputs hashed by name.
SCRIPT = r"""
import hashlib, json, sys, tempfile
from pathlib import Path
from typer.testing import CliRunner
from nnspec.cli import app

specs, drawn, want, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), set(sys.argv[3].split(",")), {}
runner = CliRunner()

def run(*args):
    r = runner.invoke(app, list(args))
    assert r.exit_code == 0, (args, r.output)
    return r.stdout

def files(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(d).iterdir())}

with tempfile.TemporaryDirectory() as tmp:
    for spec in specs:
        out["check " + spec] = hashlib.sha256(run("check", spec, "--json", "--emit", "ir").encode()).hexdigest()
        if "render" in want and spec in drawn:
            for style, fmt in (("graph", "dot"), ("graph", "svg"), ("circuit", "svg")):
                path = Path(tmp) / f"{Path(spec).stem}.{style}.{fmt}"
                run("render", spec, "-o", str(path), "--style", style, "--format", fmt)
                out[f"render {style} {fmt} {spec}"] = hashlib.sha256(path.read_bytes()).hexdigest()
        if "compile" in want and spec in drawn:
            for level in ("0", "2"):
                d = Path(tmp) / (f"compiled_O{level}_" + Path(spec).stem)
                run("compile", spec, "-o", str(d), "-O", level)
                out[f"compile -O{level} " + spec] = files(d)
print(json.dumps(out, sort_keys=True))
"""


def test_outputs_are_identical_across_hash_seeds() -> None:
    want = commands() & {"render", "compile"}
    if "render" in want and shutil.which("dot") is None:
        want.discard("render")  # graphviz's dot draws the block graph's SVG
    procs = []
    for seed in ("0", "1", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        procs.append(subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(SPECS), json.dumps(DRAWN),
                                       ",".join(sorted(want))],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout))
    assert len(results[0]) >= len(SPECS)
    assert results[0] == results[1] == results[2]
    if not want:
        pytest.skip("only `check` exists: render and compile were not compared")


def test_check_output_is_identical_when_repeated_in_one_process() -> None:
    runner = CliRunner()
    for spec in SPECS[:3]:
        outs = {runner.invoke(app, ["check", spec, "--json", "--emit", "ir"]).stdout for _ in range(3)}
        assert len(outs) == 1


# ---- atomic outputs --------------------------------------------------------------------------------------

BROKEN = "nnspec: 1\nname: broken\ninputs:\n  x: float32[B, d]\noutputs:\n  y: float32[B, d]\nbody: |\n  y = zork(x)\n"


def listing(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(d.rglob("*"))}


def test_failed_render_leaves_no_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    if "render" not in commands():
        pytest.skip("no `nnspec render`")
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN)
    out = tmp_path / "out"
    out.mkdir()
    old = out / "model.dot"
    old.write_text("the previous drawing\n")
    before = listing(out)
    for target in (old, out / "new.dot", out / "new.svg"):
        result = CliRunner().invoke(app, ["render", str(bad), "-o", str(target)])
        assert result.exit_code == 1, result.output
        assert listing(out) == before, target


def test_failed_compile_of_several_specs_writes_none(tmp_path: Path) -> None:
    if "compile" not in commands():
        pytest.skip("no `nnspec compile`")
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN)
    out = tmp_path / "out"
    out.mkdir()
    (out / "gpt2.py").write_text("# an older generated file\n")
    before = listing(out)
    # the first spec is fine, the second fails: all or nothing
    result = CliRunner().invoke(app, ["compile", str(ROOT / "examples/small/moe.yaml"), str(bad), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert listing(out) == before


def test_compile_failing_while_writing_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills while the second of two files is written: neither file, nor a temporary one, is left."""
    if "compile" not in commands():
        pytest.skip("no `nnspec compile`")
    generated = pytest.importorskip("nnspec.generated")
    compiled = [generated.compile_spec(str(ROOT / f"examples/small/{n}.yaml")) for n in ("moe", "retention")]
    real_write = Path.write_bytes
    written: list[Path] = []

    def write_bytes(self: Path, data: bytes) -> int:
        written.append(self)
        if len(written) == 2:  # half the second file reaches the disk, then it is full
            real_write(self, data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        return real_write(self, data)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space"):
        generated.write_outputs(compiled, out)
    assert listing(out) == {}


def test_compile_failing_while_renaming_leaves_only_whole_files(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    if "compile" not in commands():
        pytest.skip("no `nnspec compile`")
    generated = pytest.importorskip("nnspec.generated")
    compiled = [generated.compile_spec(str(ROOT / f"examples/small/{n}.yaml")) for n in ("moe", "retention")]
    real_replace = os.replace
    calls: list[object] = []

    def replace(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(5, "I/O error")
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "out"
    with pytest.raises(OSError):
        generated.write_outputs(compiled, out)
    sources = {c.filename: c.source for c in compiled}
    for path in out.iterdir():  # no temporary file; what is there is a whole generated file
        assert path.name in sources and path.read_text() == sources[path.name], path.name


TINY_GPT2 = dict(vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_weights_failing_while_writing_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               suffix: str) -> None:
    """The disk fills halfway through the checkpoint: the previous checkpoint is still there, whole, and no
    temporary file is left beside it."""
    torch = pytest.importorskip("torch")
    import safetensors.torch

    import nnspec
    model = nnspec.build(ROOT / "examples/gpt2.yaml", **TINY_GPT2)
    out = tmp_path / f"model{suffix}"
    out.write_bytes(b"the previous checkpoint")
    before = listing(tmp_path)

    def half_then_full(obj: object, path: str, *args: object, **kwargs: object) -> None:
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(safetensors.torch, "save_file", half_then_full)
    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(OSError, match="No space"):
        nnspec.save_weights(model, out)
    assert listing(tmp_path) == before


def test_save_weights_replaces_the_file_whole(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from safetensors.torch import load_file

    import nnspec
    model = nnspec.build(ROOT / "examples/gpt2.yaml", **TINY_GPT2)
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"the previous checkpoint")
    saved = nnspec.save_weights(model, out)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # a plain file's mode, not mkstemp's 0600
    assert sorted(load_file(out)) == sorted(saved)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
