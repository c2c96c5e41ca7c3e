"""More op handlers for `rules._EXTRA`, gathered in one table: zero padding joined to a sequence (`conv1d.py`), a
range of a configured axis (`slices.py`), an outer product or sum (`outer.py`) and a matrix-vector product
(`vectors.py`). Each falls back to the generic rule (`ops.py`) for what it does not recognise."""

from __future__ import annotations

from typing import Any

from nnspec.importer import conv1d, logic, outer, pad, roll, slices, split_sizes, vectors, windows

HANDLERS: dict[str, Any] = {**conv1d.HANDLERS, **slices.HANDLERS, **outer.HANDLERS, **vectors.HANDLERS,
                             **windows.HANDLERS, **logic.HANDLERS, **roll.HANDLERS, **split_sizes.HANDLERS,
                             **pad.HANDLERS}
