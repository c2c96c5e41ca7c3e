"""benchmarks/cpu_families.py --output: it rewrites its own section of RESULTS.md, never the sections after it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("cpu_families_under_test", ROOT / "benchmarks" / "cpu_families.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


DOC = """# Benchmark results

## `cpu_gpt2.py`: GPT-2

gpt2 table

## `cpu_families.py`

old table
### old subsection
old line

## `cpu_families.py` after this stop's wave (quiet machine)

kept table

## `cpu_decode.py`

decode table
"""


def test_replaces_only_its_own_section(bench, tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(DOC, encoding="utf-8")
    bench.write_section(path, bench.HEADING, "## `cpu_families.py`\n\nnew table\n")
    got = path.read_text(encoding="utf-8")
    want = DOC.replace("old table\n### old subsection\nold line\n", "new table\n")
    assert got == want
    assert "old line" not in got and "kept table" in got and "decode table" in got
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS.md"]   # no temporary file left behind


def test_last_section_and_missing_section(bench, tmp_path):
    last = "# R\n\n## a\n\nx\n\n## `cpu_families.py`\n\nold\n"
    assert bench.replace_section(last, bench.HEADING, "## `cpu_families.py`\n\nnew") == \
        "# R\n\n## a\n\nx\n\n## `cpu_families.py`\n\nnew\n"
    # only a longer heading that starts the same: that is another section, so ours is appended
    other = "# R\n\n## `cpu_families.py` after the wave\n\nkept\n"
    assert bench.replace_section(other, bench.HEADING, "## `cpu_families.py`\n\nnew\n") == other + \
        "\n## `cpu_families.py`\n\nnew\n"
    path = tmp_path / "new.md"   # a file that does not exist yet
    bench.write_section(path, bench.HEADING, "## `cpu_families.py`\n\nt\n")
    assert path.read_text(encoding="utf-8") == "# Benchmark results\n\n## `cpu_families.py`\n\nt\n"


def test_writing_twice_changes_nothing_more(bench, tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(DOC, encoding="utf-8")
    text = "## `cpu_families.py`\n\nnew table\n"
    bench.write_section(path, bench.HEADING, text)
    once = path.read_text(encoding="utf-8")
    bench.write_section(path, bench.HEADING, text)
    assert path.read_text(encoding="utf-8") == once


KEEP_HEAP_PROBE = """
import importlib.util, resource, sys
import torch
spec = importlib.util.spec_from_file_location("cf", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["cf"] = module
spec.loader.exec_module(module)
if sys.argv[2] == "keep":
    assert module.keep_heap().startswith("glibc heap kept")
def call():   # a 64 MiB tensor made, touched and freed, as HF's Mamba path does per layer
    t = torch.empty(16 << 20)
    t.fill_(1.0)
for _ in range(2):
    call()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    call()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _huge_pages_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.slow  # two fresh interpreters importing torch and the benchmark: tens of seconds on 2 cores
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.skipif(_huge_pages_always(), reason="huge pages always on: a fresh mapping faults per 2 MiB, not 4 KiB")
def test_keep_heap_stops_page_faults_of_large_tensors_made_each_call():
    """Without it every 64 MiB tensor is a fresh mapping faulted in page by page (16384 4 KiB pages; fewer with
    transparent huge pages always on); with it the freed block is reused."""
    import subprocess
    script = ROOT / "benchmarks" / "cpu_families.py"
    faults = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", KEEP_HEAP_PROBE, str(script), mode], capture_output=True,
                             text=True, check=True, cwd=ROOT)
        faults[mode] = int(out.stdout.split()[-1])
    # at most one of the four measured calls maps fresh memory (where the heap's layout forces a new region)
    assert faults["default"] >= 3 * 4096 and faults["keep"] <= faults["default"] // 2, faults
