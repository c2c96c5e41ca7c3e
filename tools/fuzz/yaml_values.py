"""A spec as plain YAML values: read by nnspec's own loader, dumped back to text, walked by path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from nnspec.errors import SpecError


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value and value.strip() == value.rstrip("\n").strip() else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_presenter)


def plain(data: bytes) -> Any:
    """The mutant as plain Python values, read by nnspec's own (limited) loader; None if it does not load."""
    from nnspec.spec.yaml_loader import decode, load_yaml
    try:
        return load_yaml(decode(data, "<fuzz>")).plain()
    except SpecError:
        return None


def dump(value: Any) -> bytes:
    return yaml.dump(value, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100_000).encode()


def value_paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value (not the root) in a plain YAML value."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*prefix, k)
            yield from value_paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield (*prefix, i)
            yield from value_paths(v, (*prefix, i))


def value_at(value: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        value = value[k]
    return value
