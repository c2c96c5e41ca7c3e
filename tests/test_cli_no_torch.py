"""Without the torch extra: commands that need no torch work, the others exit 2 naming the extra to install
(never an internal error with a traceback). torch is hidden from a subprocess by a sitecustomize that sets
`sys.modules["torch"] = None`, which makes every `import torch` fail as if it were not installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GPT2 = str(ROOT / "examples" / "gpt2.yaml")


@pytest.fixture(scope="module")
def env_without_torch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    shim = tmp_path_factory.mktemp("no_torch")
    (shim / "sitecustomize.py").write_text('import sys\nfor _m in ("torch", "triton", "numpy"):\n'
                                           '    sys.modules[_m] = None\n')
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])}


def _nnspec(env: dict[str, str], tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nnspec.cli", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=180)


def test_compile_names_the_torch_extra_and_check_still_works(env_without_torch: dict[str, str],
                                                             tmp_path: Path) -> None:
    hidden = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                            env=env_without_torch, timeout=60)
    assert hidden.returncode != 0   # the shim works
    done = _nnspec(env_without_torch, tmp_path, "compile", GPT2, "-o", "out")
    assert done.returncode == 2, done.stderr
    assert 'pip install "nnspec[torch]"' in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "gpt2.py").exists()
    ok = _nnspec(env_without_torch, tmp_path, "check", GPT2)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args", [["compile", GPT2, "-o", "out", "--target", "triton"], ["export", GPT2, "--hf", "hf"]])
def test_more_commands_needing_torch(env_without_torch: dict[str, str], tmp_path: Path, args: list[str]) -> None:
    done = _nnspec(env_without_torch, tmp_path, *args)
    assert done.returncode == 2, done.stderr
    assert 'pip install "nnspec[torch]"' in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args", [["schema"], ["render", GPT2, "-o", "g.dot"]])
def test_more_commands_without_torch(env_without_torch: dict[str, str], tmp_path: Path, args: list[str]) -> None:
    done = _nnspec(env_without_torch, tmp_path, *args)
    assert done.returncode == 0, done.stderr
