"""Golden negative specs: each file under tests/golden/errors/ is a small spec with exactly one mistake.

Its first line says what nnspec must report, written by hand from docs/language.md:

    # error@LINE:COL: CODE: SUBSTRING

LINE and COL are 1-based positions in the file (the header itself is line 1; columns count characters),
CODE is a stable code from nnspec.errors.CODES and SUBSTRING must appear in the message
(case-insensitively). An optional `# note: ...` line explains the mistake.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import nnspec
from nnspec.errors import CODES

GOLDEN = Path(__file__).parent / "golden" / "errors"
FILES = sorted(GOLDEN.glob("*.yaml"))
HEADER = re.compile(r"^# error@(\d+):(\d+): (E\d{3}): (\S.*?)\s*$")

MIN_FILES = 30
MIN_CODES = 15


def parse_header(path: Path) -> tuple[int, int, str, str]:
    """(line, col, code, substring) from the file's first line; fails the test if it is missing."""
    text = path.read_bytes().decode("utf-8")
    first = text.splitlines()[0] if text else ""
    match = HEADER.match(first)
    if match is None:
        pytest.fail(f"{path.name}: first line must be '# error@LINE:COL: CODE: SUBSTRING', got {first!r}")
    line, col, code, substring = int(match[1]), int(match[2]), match[3], match[4]
    assert code in CODES, f"{path.name}: unknown error code {code}"
    return line, col, code, substring


def test_golden_suite_size() -> None:
    assert len(FILES) >= MIN_FILES, f"only {len(FILES)} golden error specs in {GOLDEN}"
    codes = {parse_header(path)[2] for path in FILES}
    assert len(codes) >= MIN_CODES, f"only {len(codes)} distinct codes: {sorted(codes)}"


def test_golden_headers_point_into_the_file() -> None:
    for path in FILES:
        line, col, _, _ = parse_header(path)
        lines = path.read_bytes().decode("utf-8").split("\n")
        assert 2 <= line <= len(lines), f"{path.name}: line {line} is not in the spec"
        assert 1 <= col <= len(lines[line - 1]) + 1, f"{path.name}: col {col} is past the end of line {line}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_golden_error(path: Path) -> None:
    line, col, code, substring = parse_header(path)
    spec = str(path)
    with pytest.raises(nnspec.SpecError) as info:
        nnspec.check(spec)
    err = info.value
    got = (err.code, err.span.line if err.span else None, err.span.col if err.span else None)
    assert got == (code, line, col), f"expected {code} at {line}:{col}, got:\n{err}"
    assert substring.lower() in err.message.lower(), f"expected {substring!r} in the message, got:\n{err}"
    assert err.span.source.name == spec
    assert str(err).startswith(f"{spec}:{line}:{col}: error[{code}]"), str(err)
