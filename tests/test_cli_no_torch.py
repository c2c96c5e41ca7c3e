"""Without an extra installed: commands that need it exit 2 naming the `pip install` (never an internal error with a
traceback), and the rest work. `compile` (both targets, every -O level), `check`, `render`, `schema` need no torch:
generating source is text work, and the files written without torch are byte for byte those written with it.

A package is hidden from a subprocess by a sitecustomize that sets `sys.modules[name] = None`, which makes every
`import name` fail as if it were not installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nnspec.cli import app

ROOT = Path(__file__).resolve().parent.parent
GPT2 = str(ROOT / "examples" / "gpt2.yaml")
LLAMA = str(ROOT / "examples" / "llama.yaml")
MIXTRAL = str(ROOT / "examples" / "mixtral.yaml")


def _env_hiding(tmp_path_factory: pytest.TempPathFactory, *modules: str) -> dict[str, str]:
    shim = tmp_path_factory.mktemp("hidden")
    (shim / "sitecustomize.py").write_text(f"import sys\nfor _m in {modules!r}:\n    sys.modules[_m] = None\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])}


@pytest.fixture(scope="module")
def env_without_torch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _env_hiding(tmp_path_factory, "torch", "triton", "numpy")


def _nnspec(env: dict[str, str], tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nnspec.cli", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)


def _compiled_with_torch(tmp_path: Path, specs: list[str], *flags: str) -> dict[str, bytes]:
    out = tmp_path / "with_torch"
    run = CliRunner().invoke(app, ["compile", *specs, "-o", str(out), *flags])
    assert run.exit_code == 0, run.output
    return {p.name: p.read_bytes() for p in out.iterdir()}


def _compile_without_torch(env: dict[str, str], tmp_path: Path, specs: list[str], *flags: str) -> dict[str, bytes]:
    done = _nnspec(env, tmp_path, "compile", *specs, "-o", "out", *flags)
    assert done.returncode == 0, done.stderr
    return {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}


def test_compile_without_torch_writes_the_same_files(env_without_torch: dict[str, str], tmp_path: Path) -> None:
    hidden = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                            env=env_without_torch, timeout=60)
    assert hidden.returncode != 0   # the shim works
    files = _compile_without_torch(env_without_torch, tmp_path, [GPT2], "-O2")
    assert sorted(files) == ["gpt2.py"]
    assert files == _compiled_with_torch(tmp_path, [GPT2], "-O2")
    assert b"import torch" in files["gpt2.py"]    # a real generated module, not an empty file


def test_check_works_and_running_a_model_names_the_torch_extra(env_without_torch: dict[str, str],
                                                                tmp_path: Path) -> None:
    ok = _nnspec(env_without_torch, tmp_path, "check", GPT2)
    assert ok.returncode == 0, ok.stderr
    assert "85,054,464" in ok.stdout
    done = _nnspec(env_without_torch, tmp_path, "generate", GPT2, "--prompt-ids", "1,2")
    assert done.returncode == 2, done.stderr
    assert 'pip install "nnspec[torch]"' in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["-O0"], ["-O1"], ["--target", "triton", "-O0"], ["--target", "triton", "-O2"],
                                   ["-O2", "--dtype", "bf16"], ["-O2", "--lora", "*:4"]])
def test_compile_without_torch_at_every_level_and_target(env_without_torch: dict[str, str], tmp_path: Path,
                                                         flags: list[str]) -> None:
    specs = [GPT2, LLAMA, MIXTRAL]
    assert _compile_without_torch(env_without_torch, tmp_path, specs, *flags) == \
        _compiled_with_torch(tmp_path, specs, *flags)


@pytest.mark.slow
@pytest.mark.parametrize("args", [["export", GPT2, "--hf", "hf"], ["import", "config.json", "-o", "x.yaml"]])
def test_more_commands_needing_torch(env_without_torch: dict[str, str], tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, '
                                          '"vocab_size": 50, "n_positions": 16}')
    done = _nnspec(env_without_torch, tmp_path, *args)
    assert done.returncode == 2, done.stderr
    assert 'pip install "nnspec[torch]"' in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args", [["schema"], ["render", GPT2, "-o", "g.dot"],
                                  ["render", GPT2, "-o", "c.svg", "--style", "circuit"]])
def test_more_commands_without_torch(env_without_torch: dict[str, str], tmp_path: Path, args: list[str]) -> None:
    done = _nnspec(env_without_torch, tmp_path, *args)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("hidden", "args", "extra"), [
    (("starlette", "uvicorn"), ["serve", GPT2], "web"),
    (("onnx", "onnxscript"), ["export", GPT2, "--set", "n_layer=1", "--onnx", "m.onnx"], "onnx"),
    (("safetensors",), ["export", GPT2, "--set", "n_layer=1", "--hf", "hf"], "hf"),
])
def test_a_missing_extra_is_a_usage_error_naming_it(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
                                                    hidden: tuple[str, ...], args: list[str], extra: str) -> None:
    done = _nnspec(_env_hiding(tmp_path_factory, *hidden), tmp_path, *args)
    assert done.returncode == 2, done.stderr
    assert f"nnspec[{extra}]" in done.stderr and "Traceback" not in done.stderr
