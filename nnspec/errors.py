"""One error type for every mistake in a spec, and one for nnspec's own bugs.

A `SpecError` always names a place in the user's text (a `Span`) and a stable code; an `InternalError`
means nnspec is wrong, never the user, and is reported differently (exit code 3, "please report").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from nnspec.spec.source import Span

# Stable codes. Titles feed docs/errors.md; never renumber, only add.
CODES: dict[str, str] = {
    "E001": "YAML syntax error",
    "E002": "duplicate key",
    "E003": "unknown key",
    "E004": "wrong kind of value",
    "E005": "input exceeds a structural limit",
    "E006": "unreadable input (encoding, binary data, tabs)",
    "E007": "unsupported format version",
    "E008": "missing required key",
    "E010": "expression syntax error",
    "E011": "undefined name",
    "E012": "axis size or name mismatch",
    "E013": "dtype mismatch",
    "E014": "size does not divide",
    "E015": "constraint violated",
    "E016": "unknown function or argument",
    "E017": "unknown or duplicate axis",
    "E018": "invalid rearrange",
    "E019": "wrong number of arguments or values",
    "E020": "cycle",
    "E021": "output missing or of the wrong type",
    "E022": "Hugging Face config cannot be honoured",
    "E023": "size out of range",
    "E024": "name defined twice",
    "E025": "repeated block changes its type",
    "E026": "value of the wrong kind in an expression",
    "E027": "weight mapping does not fit the parameters",
    "E028": "include not found or not allowed",
}


@dataclass
class Note:
    message: str
    span: Span | None = None


@dataclass
class SpecError(Exception):
    """A mistake in a spec: a code, a message and the place it was made."""

    code: str
    message: str
    span: Span | None = None
    notes: list[Note] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise InternalError(f"unregistered error code {self.code}")
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.render()

    def with_note(self, message: str, span: Span | None = None) -> SpecError:
        self.notes.append(Note(message, span))
        return self

    def render(self) -> str:
        """`file:line:col: error[E012]: message`, the source line, a caret, then notes."""
        lines = [_headline(self.span, f"error[{self.code}]", self.message)]
        lines += _excerpt(self.span)
        for note in self.notes:
            if note.span is not None:
                lines.append(_headline(note.span, "note", note.message))
                lines += _excerpt(note.span)
            else:
                lines.append(visible(f"note: {note.message}"))
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "severity": "error",
            "code": self.code,
            "message": self.message,
            "span": self.span.to_json() if self.span else None,
            "notes": [{"message": n.message, "span": n.span.to_json() if n.span else None}
                      for n in self.notes],
        }


class InternalError(Exception):
    """nnspec itself is wrong. Never raised for a user's mistake."""


class ResourceError(Exception):
    """A valid model that would not fit: building it needs more memory than allowed (`max_memory`).

    Not a `SpecError`: the spec is right, the model is too big for this limit. Raised before anything is allocated,
    with the estimate (`needed`, bytes) and the limit (`limit`, bytes) in the message and as attributes.
    """

    def __init__(self, message: str, needed: int, limit: int) -> None:
        super().__init__(message)
        self.message = message
        self.needed = needed
        self.limit = limit

    def to_json(self) -> dict[str, Any]:
        """A diagnostic like `SpecError.to_json()`: code `R001`, no span."""
        return {"severity": "error", "code": "R001", "message": self.message, "span": None, "notes": []}


@dataclass
class Warning_:
    message: str
    span: Span | None = None

    def render(self) -> str:
        return "\n".join([_headline(self.span, "warning", self.message), *_excerpt(self.span)])

    def to_json(self) -> dict[str, Any]:
        return {"severity": "warning", "message": self.message,
                "span": self.span.to_json() if self.span else None}


# C0 and C1 control characters but newline and tab: echoed raw from a dim key or a config.json key, ESC and BEL
# would change the terminal's title or clear its screen
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """`text` with each control character written as an escape (backslash x1b), so a message cannot drive a
    terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _picture(text: str) -> str:
    """Control characters as one visible character each (U+2400's pictures, or U+FFFD), keeping carets aligned."""
    return _CONTROL.sub(lambda m: chr(0x2400 + ord(m.group())) if ord(m.group()) < 0x20 else
                        "\u2421" if m.group() == "\x7f" else "\ufffd", text)


def _headline(span: Span | None, kind: str, message: str) -> str:
    where = f"{span.source.name}:{span.line}:{span.col}: " if span else ""
    return visible(f"{where}{kind}: {message}")


def _excerpt(span: Span | None) -> list[str]:
    if span is None:
        return []
    text = span.source.line_text(span.line)
    if text is None:
        return []
    width = max(1, (span.end_col - span.col) if span.end_line == span.line else len(text) - span.col + 1)
    gutter = f"{span.line:>5} | "
    line = _picture(text.replace("\t", " "))
    return [gutter + line, " " * (len(gutter) - 2) + "| " + " " * (span.col - 1) + "^" * width]


def errors_to_json(error: SpecError | ResourceError | None, warnings: list[Warning_]) -> str:
    return json.dumps({"version": 1, "ok": error is None,
                       "diagnostics": [w.to_json() for w in warnings] + ([error.to_json()] if error else [])},
                      indent=2)
