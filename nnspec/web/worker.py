"""The playground's checker: spec text in, a JSON-able answer out, computed in a separate process.

A spec is only ever parsed and checked (YAML, the expression grammar, the type rules): nothing in it is run as
code. Checking is still unbounded work for a hostile spec (a huge repeat, deep includes), so it runs in a worker
process the server can kill: `Worker.call` waits at most `limit_s` seconds, then kills the process and starts a
fresh one for the next request. The worker imports nnspec once, when started, so a check pays no start-up cost.
"""

from __future__ import annotations

import multiprocessing
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

MAX_SPEC_BYTES = 256 * 1024     # what the page may send; a spec file of this size is already an unusual model


def check_text(text: str, sets: str, name: str = "<playground>", origin: str | None = None) -> dict[str, Any]:
    """`{"ok": true, "model": payload, "diagnostics": [warnings]}` or `{"ok": false, "diagnostics": [...]}`,
    each diagnostic as `nnspec check --json` writes it (severity, code, message, span with line and col)."""
    from nnspec.compiler.elaborate import UsageError
    from nnspec.errors import SpecError
    from nnspec.pipeline import Pipeline
    from nnspec.spec.load import load_source
    from nnspec.spec.yaml_loader import decode
    from nnspec.web.page import payload

    try:
        overrides = parse_overrides(sets)
        source = decode(text.encode("utf-8"), name, Path(origin) if origin else None)
        result = Pipeline(load_source(source), overrides=overrides).checked
        data = payload(result)
    except SpecError as err:
        return {"ok": False, "diagnostics": [err.to_json()]}
    except (UsageError, ValueError) as err:   # an unknown or malformed override: said, not located in the spec
        return {"ok": False, "diagnostics": [{"severity": "error", "code": "U001", "message": str(err),
                                              "span": None}]}
    return {"ok": True, "model": data, "diagnostics": [w.to_json() for w in result.warnings]}


def parse_overrides(text: str) -> dict[str, Any]:
    """`n_layer=2, n_embd=64` (commas or spaces between) -> typed values, read as `nnspec check --set` reads them."""
    out: dict[str, Any] = {}
    for item in text.replace(",", " ").split():
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"dims take name=value, got {item!r}")
        value: Any = raw.strip()
        if value.lower() in ("true", "false"):
            value = value.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(value)
                    break
                except ValueError:
                    continue
        out[key.strip()] = value
    return out


def _loop(conn: Connection) -> None:
    import nnspec.pipeline
    import nnspec.web.page  # noqa: F401  (imported before saying ready: the first check pays no import time)

    conn.send("ready")
    while True:
        try:
            args = conn.recv()
        except EOFError:
            return
        try:
            conn.send(check_text(*args))
        except Exception as err:   # a bug in nnspec, not the spec's fault: the page says so rather than hang
            conn.send({"ok": False, "internal": True, "diagnostics": [
                {"severity": "error", "code": "internal", "message": f"nnspec internal error: {err!r}",
                 "span": None}]})


class CheckTimeout(Exception):
    pass


class Worker:
    """One checking process, used by one request at a time, killed and replaced when a check runs too long."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Connection | None = None

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")    # not fork: the server's threads are not copied into it
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_loop, args=(child,), daemon=True, name="nnspec-check")
        proc.start()
        child.close()
        if not parent.poll(120) or parent.recv() != "ready":
            proc.kill()
            raise RuntimeError("the checking process did not start")
        self._proc, self._conn = proc, parent

    def call(self, text: str, sets: str, name: str, origin: str | None) -> dict[str, Any]:
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self.start()
            assert self._conn is not None
            self._conn.send((text, sets, name, origin))
            if self._conn.poll(self.limit_s):
                return self._conn.recv()
            self.stop()
            raise CheckTimeout(f"checking took longer than {self.limit_s:g} s and was stopped")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None
