"""Outputs appear whole or not at all: write beside the target, then rename into place."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path


def _plain_mode(path: str) -> None:
    """mkstemp makes files 0600; give them the mode a plain open() would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def staged(targets: Sequence[Path]) -> Iterator[list[str]]:
    """Temporary paths beside each target; renamed onto the targets only if the block succeeds, so several files
    land together (a failure before the renames leaves every target untouched)."""
    temps: list[str] = []
    try:
        for target in targets:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            temps.append(tmp)
        yield temps
        for tmp, target in zip(temps, targets, strict=True):
            _plain_mode(tmp)
            os.replace(tmp, target)
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)


def write_atomic(path: Path, data: bytes) -> None:
    with staged([path]) as (tmp,):
        Path(tmp).write_bytes(data)
