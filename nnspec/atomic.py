"""Outputs appear whole or not at all: write beside the target, then rename into place."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path


def _plain_mode(path: str) -> None:
    """mkstemp makes files 0600; give them the mode a plain open() would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


STALE_S = 3600   # a temp file of ours this old was left by a process killed mid-write (SIGKILL): swept


class Terminated(SystemExit):
    """SIGTERM or SIGHUP arrived while files were staged: raised so the temp files are removed on the way out; the
    process then exits 128 + the signal's number, as the signal's default action would, without a traceback."""


def _sweep(target: Path) -> None:
    """Remove temp files of our own naming (`.NAME.XXXX.tmp`) beside `target` left by a killed run."""
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return
    prefix = f".{target.name}."
    for entry in entries:
        if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False) and time.time() - entry.stat().st_mtime > STALE_S:
                    os.unlink(entry.path)


@contextlib.contextmanager
def _cleanup_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `Terminated` (main thread only), so `finally` clauses run as they do for SIGINT."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    def fire(signum: int, frame: object) -> None:
        raise Terminated(128 + signum)
    old = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            old[sig] = signal.signal(sig, fire)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def staged(targets: Sequence[Path]) -> Iterator[list[str]]:
    """Temporary paths beside each target; renamed onto the targets only if the block succeeds, so several files
    land together (a failure before the renames leaves every target untouched). SIGTERM and SIGHUP remove the
    temp files too; those of a run killed outright are swept by the next write to the same place."""
    temps: list[str] = []
    with _cleanup_on_signals():
        try:
            for target in targets:
                _sweep(target)
            yield from _staged(targets, temps)
        finally:
            for tmp in temps:
                if os.path.exists(tmp):
                    os.unlink(tmp)


def _staged(targets: Sequence[Path], temps: list[str]) -> Iterator[list[str]]:
    for target in targets:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        temps.append(tmp)
    yield temps
    for tmp, target in zip(temps, targets, strict=True):
        _plain_mode(tmp)
        os.replace(tmp, target)


def write_atomic(path: Path, data: bytes) -> None:
    with staged([path]) as (tmp,):
        Path(tmp).write_bytes(data)
