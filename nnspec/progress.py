"""Progress bars for long work (loading a sharded checkpoint, fuzzing, benchmarks): a rich bar on stderr when it is
a terminal, nothing at all otherwise (pipes, CI logs and tests see no output), so callers need not ask."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def shown() -> bool:
    """Bars are drawn only on a terminal, and never under NNSPEC_PROGRESS=0."""
    return os.environ.get("NNSPEC_PROGRESS", "1") != "0" and sys.stderr.isatty()


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """`with progress("loading weights", n) as advance: ... advance(1)`; `total=None` for an open-ended count."""
    if not shown():
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
