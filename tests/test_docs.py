"""Generated docs cannot go stale: docs/errors.md must be exactly what `nnspec.docs_gen` produces now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nnspec.compiler.elaborate import BUILTINS
from nnspec.compiler.ops import OPS
from nnspec.compiler.ops.registry import TRAITS
from nnspec.docs_gen import errors_markdown, ops_markdown
from nnspec.errors import CODES

ROOT = Path(__file__).parent.parent
ERRORS_MD = ROOT / "docs" / "errors.md"
REGENERATE = "python -m nnspec.docs_gen errors > docs/errors.md"


def test_errors_md_is_up_to_date() -> None:
    assert ERRORS_MD.read_text(encoding="utf-8") == errors_markdown(), f"docs/errors.md is stale: run `{REGENERATE}`"


def test_errors_md_lists_every_code_once() -> None:
    text = errors_markdown()
    for code, title in CODES.items():
        assert text.count(f"\n## {code}: {title}\n") == 1, code


def test_errors_md_shows_an_example_for_every_code() -> None:
    """Each code's section shows a golden and the error nnspec renders for it, at that code."""
    sections = errors_markdown().split("\n## ")[1:]
    assert len(sections) == len(CODES)
    for section in sections:
        code = section[:4]
        assert "Example: [`tests/golden/errors/" in section, code
        rendered = section.split("```text\n", 1)[1].split("\n```", 1)[0]
        assert f": error[{code}]: " in rendered.split("\n")[0], code


def test_examples_use_relative_paths_and_real_messages() -> None:
    text = errors_markdown()
    assert "tests/golden/errors/duplicate_body.yaml:11:1: error[E002]: duplicate key 'body'" in text
    assert str(ROOT) not in text


def test_generator_does_not_depend_on_the_working_directory(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "nnspec.docs_gen", "errors"], cwd=tmp_path,
                          capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == errors_markdown()


def test_generator_usage() -> None:
    proc = subprocess.run([sys.executable, "-m", "nnspec.docs_gen"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_ops_md_is_up_to_date() -> None:
    current = (ROOT / "docs" / "ops.md").read_text(encoding="utf-8")
    assert current == ops_markdown(), "docs/ops.md is stale: run `python -m nnspec.docs_gen ops > docs/ops.md`"


def test_ops_md_documents_every_op_and_function() -> None:
    text = ops_markdown()
    for name in OPS:
        assert f"| `{name}` |" in text, name
    for b in BUILTINS.values():  # a `|` inside a table cell is escaped, or it would end the cell
        assert f"| `{b.signature.replace('|', chr(92) + '|')}` |" in text, b.name
    cells = 0
    for line in text.split("\n"):   # every row has as many cells as its table's header
        if line.startswith("| ") and not line.startswith("| `"):
            cells = len(line.split("|"))
        elif line.startswith("| `"):
            assert len(line.replace("\\|", "").split("|")) == cells, line


def test_ops_md_shows_each_ops_effect_and_traits() -> None:
    text = ops_markdown()
    for trait in TRAITS:
        assert f"| `{trait}` |" in text, trait
    for name, op in OPS.items():
        row = next(line for line in text.split("\n") if line.startswith(f"| `{name}` |") and "|---" not in line
                   and line.count("|") > 4)
        traits = ", ".join(f"`{t}`" for t in sorted(op.traits)) or "-"
        assert f"| {op.effect.value} | {traits} |" in row, row
