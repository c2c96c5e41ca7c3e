"""Source text and locations in it. Lines and columns are 1-based, columns count characters."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Source:
    """A spec's text and the name it is reported under (a path, or `<string>`)."""

    name: str
    text: str
    origin: Any = None  # the file's Path, when it came from one (includes resolve against it)
    _line_starts: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._line_starts = [0] + [i + 1 for i, ch in enumerate(self.text) if ch == "\n"]

    def position(self, offset: int) -> tuple[int, int]:
        """(line, col) of a character offset."""
        offset = max(0, min(offset, len(self.text)))
        line = bisect.bisect_right(self._line_starts, offset)
        return line, offset - self._line_starts[line - 1] + 1

    def offset(self, line: int, col: int) -> int:
        return self._line_starts[line - 1] + col - 1

    def line_text(self, line: int) -> str | None:
        if not 1 <= line <= len(self._line_starts):
            return None
        start = self._line_starts[line - 1]
        end = self.text.find("\n", start)
        return self.text[start:] if end < 0 else self.text[start:end]

    def span(self, start: int, end: int) -> Span:
        line, col = self.position(start)
        end_line, end_col = self.position(max(start + 1, end))
        return Span(self, line, col, end_line, end_col)


@dataclass(frozen=True, eq=False)
class Span:
    """A range of source text: start inclusive, end exclusive."""

    source: Source
    line: int
    col: int
    end_line: int
    end_col: int

    def to_json(self) -> dict[str, Any]:
        return {"file": self.source.name, "line": self.line, "col": self.col,
                "end_line": self.end_line, "end_col": self.end_col}

    def __repr__(self) -> str:
        return f"{self.source.name}:{self.line}:{self.col}"


class TextMap:
    """Maps offsets in a YAML scalar's *value* back to offsets in the source.

    A literal block (`|`) or a single-line plain/quoted scalar maps exactly; anything YAML folded or
    unescaped maps each line of the value to its source line as well as can be known.
    """

    def __init__(self, source: Source, value_offsets: list[int]) -> None:
        self.source = source
        self._offsets = value_offsets  # source offset of each value character (+ one past the end)

    def span(self, start: int, end: int) -> Span:
        n = len(self._offsets) - 1
        s = self._offsets[max(0, min(start, n))]
        e = self._offsets[max(0, min(end, n))] if end > start else s + 1
        if end > start and end - 1 <= n:
            e = self._offsets[min(end - 1, n)] + 1
        return self.source.span(s, max(s + 1, e))
