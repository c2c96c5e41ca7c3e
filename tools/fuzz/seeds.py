"""Seeds (the example and golden specs, and each with the standard library written in) and mutants of them."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tools.fuzz.yaml_values import dump

SEED_GLOBS = ("examples/*.yaml", "examples/small/*.yaml", "tests/golden/ir/*.yaml")


@dataclass(repr=False)
class Seed:
    name: str
    text: str
    small: dict[str, int] | None = None  # `--set` overrides that make the model small enough to run
    small_done: bool = False

    def __repr__(self) -> str:
        return f"Seed({self.name!r})"


def load_seeds(root: str | os.PathLike[str]) -> list[Seed]:
    """The example specs, and each one that includes the standard library once more with those blocks written
    into it (`... (std inlined)`), so that mutations reach the library's blocks too."""
    root = Path(root)
    paths = sorted({p for g in SEED_GLOBS for p in root.glob(g)})
    seeds = [Seed(p.relative_to(root).as_posix(), p.read_text(encoding="utf-8")) for p in paths]
    return seeds + [Seed(f"{s.name} (std inlined)", text) for s in seeds if (text := inline_std(s.text))]


def inline_std(text: str) -> str | None:
    """`text` with its `include: [std/...]` files' blocks copied into its `blocks:`; None if it includes none."""
    from nnspec.spec.load import STDLIB
    value = yaml.safe_load(text)
    includes = value.get("include") or []
    if not includes or not all(isinstance(i, str) and i.startswith("std/") for i in includes):
        return None
    blocks: dict[str, Any] = {}
    for ref in includes:
        blocks.update(yaml.safe_load((STDLIB / ref[4:]).read_text(encoding="utf-8")).get("blocks") or {})
    blocks.update(value.get("blocks") or {})
    out = {k: v for k, v in value.items() if k != "include"}
    out["blocks"] = blocks
    return dump(out).decode()


class Mutant:
    """A seed's bytes after some mutations (a plain class, so Hypothesis prints it with `__repr__`)."""

    __slots__ = ("data", "mutations", "seed")

    def __init__(self, seed: Seed, data: bytes, mutations: tuple[str, ...]) -> None:
        self.seed, self.data, self.mutations = seed, data, mutations

    def __repr__(self) -> str:
        return f"Mutant({self.seed.name!r}, {list(self.mutations)!r})"

    def diff(self, limit: int = 40) -> str:
        """The mutant against its seed, as a unified diff (at most `limit` lines)."""
        new = self.data.decode("utf-8", "backslashreplace").splitlines()
        lines = list(difflib.unified_diff(self.seed.text.splitlines(), new, self.seed.name, "mutant", lineterm="",
                                          n=1))
        return "\n".join(lines[:limit] + ([f"... {len(lines) - limit} more lines"] if len(lines) > limit else []))
