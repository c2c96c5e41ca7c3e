"""Progress bars (`nnspec.progress`): drawn on a terminal only; silent in pipes and tests, and under
NNSPEC_PROGRESS=0."""

from __future__ import annotations

import io

import pytest

from nnspec import progress as P


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    assert not P.shown()          # pytest's captured stderr is no terminal
    with P.progress("work", 3) as advance:
        for _ in range(3):
            advance(1)
    assert capsys.readouterr().err == ""


def test_drawn_on_a_terminal_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = _Tty()
    monkeypatch.setattr("sys.stderr", tty)
    assert P.shown()
    with P.progress("loading 3 tensors", 3) as advance:
        for _ in range(3):
            advance(1)
    assert "loading 3 tensors" in tty.getvalue()
    monkeypatch.setenv("NNSPEC_PROGRESS", "0")
    assert not P.shown()
