"""JSON read as untrusted input (a `--config` file, a checkpoint's shard index): integers are bounded before Python
converts them (past 4,300 digits `int()` raises a bare ValueError), and a key given twice is refused instead of
silently taking the last value."""

from __future__ import annotations

import json
from typing import Any

MAX_INT_CHARS = 100     # no size, count or id in a config has more digits


class JSONProblem(ValueError):
    """Valid JSON nnspec will not read; `what` says why."""

    def __init__(self, what: str, key: str | None = None) -> None:
        super().__init__(what)
        self.what, self.key = what, key


def _int(text: str) -> int:
    if len(text) > MAX_INT_CHARS:
        raise JSONProblem(f"an integer with {len(text):,} digits (at most {MAX_INT_CHARS} are read)")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_INT_CHARS * 4:
        raise JSONProblem(f"a number written with {len(text):,} characters")
    return float(text)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JSONProblem(f"the key {key[:100]!r} twice in one object", key)
        out[key] = value
    return out


def loads(text: str) -> Any:
    """`json.loads`, raising `JSONProblem` for huge integers and duplicate keys (and JSONDecodeError, RecursionError
    as json does)."""
    return json.loads(text, parse_int=_int, parse_float=_float, object_pairs_hook=_object)


__all__ = ["MAX_INT_CHARS", "JSONProblem", "loads"]
