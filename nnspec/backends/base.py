"""The backend contract: what the pipeline needs from a backend, and the registry `--target` reads its choices from.

A backend turns an optimised `Model` into a standalone source file and loads that file as a module. It states its
options explicitly (each with a default and a line of help); the pipeline chooses their values (e.g. from `-O2`),
the backend never infers them. A backend that cannot generate some model says why (`refuses`), before any work.

Backends are registered by module path so that listing them (`--target` choices, docs) imports neither torch nor
triton: `get(name)` imports the one asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

from nnspec.compiler.ir import Model


@dataclass(frozen=True)
class Option:
    """One explicit backend option."""

    name: str
    default: Any
    help: str


@dataclass
class Generated:
    """A backend's output for one model: the file's text, the class to instantiate, and what it chose (one line each,
    for `--explain`)."""

    source: str
    class_name: str
    explain: list[str] = field(default_factory=list)


class Backend(Protocol):
    name: str
    description: str
    options: tuple[Option, ...]

    def refuses(self, model: Model) -> str | None:
        """Why this backend cannot generate `model` (a sentence for the user), or None."""

    def generate(self, model: Model, *, spec_text: str, doc: str | None, label: str,
                 options: Mapping[str, Any]) -> Generated:
        """The standalone source for `model`. `label` is the optimisation level the header names (`-O2`, with the
        passes that ran when they are not the level's own); `options` holds a value for every declared option."""

    def load(self, generated: Generated, name: str) -> ModuleType:
        """Execute generated source as a module (registered in `sys.modules`, its text in `linecache`)."""


# name -> "module:attribute" of the Backend instance; imported on first use
REGISTRY: dict[str, str] = {
    "torch": "nnspec.backends.torch.backend:BACKEND",
    "triton": "nnspec.backends.triton.backend:BACKEND",
}


def names() -> tuple[str, ...]:
    """The registered backends' names, in registration order (the `--target` choices)."""
    return tuple(REGISTRY)


def get(name: str) -> Backend:
    """The backend called `name`; ValueError naming the known ones otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown target {name!r}; known: {', '.join(REGISTRY)}")
    module, attr = REGISTRY[name].split(":")
    backend: Backend = getattr(importlib.import_module(module), attr)
    return backend


def resolve_options(backend: Backend, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every declared option's value: `given` over the defaults; ValueError for an option the backend lacks."""
    known = {o.name: o for o in backend.options}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"backend {backend.name!r} has no option {', '.join(map(repr, unknown))}; "
                         f"its options: {', '.join(known) or 'none'}")
    return {name: given.get(name, o.default) for name, o in known.items()}

