"""`--backend-option NAME[=VALUE]`: a target's backend options (`nnspec.backends.base.Option`) from the command line.

The same choice as `backend_options=` of `nnspec.build` and `compile_spec`, over the optimisation level's own
(`--backend-option parallel_scan` turns the chunked scan on at any level, `--backend-option sdpa=false` keeps
attention spelled out at -O2). Every option is on/off, so VALUE is one of the words in `_WORDS`; a bare NAME is on.
A name the target does not declare is a usage error that lists the ones it does, with their help.
"""

from __future__ import annotations

from typing import Annotated

import typer

from nnspec.backends.base import get
from nnspec.compiler.elaborate import UsageError

_WORDS = {"true": True, "on": True, "yes": True, "1": True, "false": False, "off": False, "no": False, "0": False}

Flag = Annotated[list[str] | None, typer.Option(
    "--backend-option", metavar="NAME[=VALUE]",
    help="turn a backend option on (NAME, NAME=true) or off (NAME=false) over the level's choice, e.g. "
         "parallel_scan; repeatable (docs/cli.md lists them)")]


def parse(items: list[str] | None, target: str) -> dict[str, bool]:
    """`["parallel_scan", "sdpa=off"]` -> `{"parallel_scan": True, "sdpa": False}` for `target`'s backend;
    UsageError for a malformed item, a value that is not on/off or a name the backend lacks."""
    out: dict[str, bool] = {}
    if not items:
        return out
    known = {o.name: o.help for o in get(target).options}
    for item in items:
        name, sep, raw = (part.strip() for part in item.partition("="))
        if not name:
            raise UsageError(f"--backend-option takes NAME or NAME=VALUE, got {item!r}")
        if name not in known:
            listed = "; ".join(f"{n} ({h})" for n, h in known.items()) or "none"
            raise UsageError(f"--backend-option: target {target!r} has no option {name!r}; its options: {listed}")
        if sep and raw.lower() not in _WORDS:
            raise UsageError(f"--backend-option {name} takes true or false (on/off, yes/no, 1/0), got {raw!r}")
        out[name] = _WORDS[raw.lower()] if sep else True
    return out
