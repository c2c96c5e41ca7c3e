"""Golden negative specs: each file under tests/golden/errors/ is a small spec with exactly one mistake.

Its first line says what nnspec must report, written by hand from docs/language.md:

    # error@LINE:COL: CODE: SUBSTRING

LINE and COL are 1-based positions in the file (the header itself is line 1; columns count characters),
CODE is a stable code from nnspec.errors.CODES and SUBSTRING must appear in the message
(case-insensitively). An optional `# note: ...` line explains the mistake. A golden may hold bytes that are not
UTF-8 after its header (that is the mistake it shows); the header itself is ASCII.

Mistakes in a Hugging Face config.json (E022) cannot carry a comment: each `config/NAME.json` has its expectation
in `config/NAME.expect`: a `# spec: PATH` line (the spec it is mapped onto, relative to the repository root),
then the same `# error@LINE:COL: CODE: SUBSTRING` header, LINE:COL counted in the JSON file.

The issues ask for at least 50 goldens across at least 18 kinds of mistake; a kind is an error code.
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

MIN_FILES = 50
MIN_CODES = 18
ROOT = Path(__file__).parent.parent
CONFIGS = sorted((GOLDEN / "config").glob("*.json"))


def parse_header(path: Path) -> tuple[int, int, str, str]:
    """(line, col, code, substring) from the file's first line; fails the test if it is missing."""
    text = path.read_bytes().decode("utf-8", "replace")
    first = text.split("\n")[0] if text else ""
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
        lines = path.read_bytes().decode("utf-8", "replace").split("\n")
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


def parse_expect(path: Path) -> tuple[Path, int, int, str, str]:
    """(spec, line, col, code, substring) from a config golden's `.expect` file."""
    lines = path.with_suffix(".expect").read_text(encoding="utf-8").split("\n")
    spec = re.match(r"^# spec: (\S+)\s*$", lines[0])
    match = HEADER.match(lines[1])
    assert spec is not None and match is not None, f"{path.name}: bad .expect file"
    assert match[3] in CODES
    return ROOT / spec[1], int(match[1]), int(match[2]), match[3], match[4]


def test_every_config_golden_has_an_expectation() -> None:
    assert len(CONFIGS) >= 3
    for path in CONFIGS:
        assert path.with_suffix(".expect").is_file(), path.name


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_golden_config_error(path: Path) -> None:
    spec, line, col, code, substring = parse_expect(path)
    with pytest.raises(nnspec.SpecError) as info:
        nnspec.check(spec, config=path)
    err = info.value
    got = (err.code, err.span.line if err.span else None, err.span.col if err.span else None)
    assert got == (code, line, col), f"expected {code} at {line}:{col}, got:\n{err}"
    assert substring.lower() in err.message.lower(), f"expected {substring!r} in the message, got:\n{err}"
    assert err.span.source.name == str(path)


def test_every_error_code_has_a_golden() -> None:
    """docs/errors.md shows one example per code, taken from these goldens."""
    codes = {parse_header(p)[2] for p in FILES} | {parse_expect(p)[3] for p in CONFIGS}
    assert codes == set(CODES), sorted(set(CODES) - codes)
