"""`F.pad` that pads nothing (`aten.pad` / `constant_pad_nd` with every width 0) is the value itself: Hugging Face's
Swin pads the grid to a multiple of the window on every layer (`maybe_pad`), which at a grid the window divides
adds nothing. Padding of any width is refused (the language pads by `concat` with zeros, `conv1d.py`, a pattern
this rule does not rewrite)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter


def lift_pad(lifter: Lifter, n: fx.Node) -> Any:
    widths = n.args[1] if len(n.args) > 1 else n.kwargs.get("pad", ())
    if not all(isinstance(w, int) for w in widths):
        raise lifter.fail(n, "a padding whose widths are computed at run time")
    if any(widths):
        raise lifter.fail(n, f"a padding by {list(widths)} (only a padding of width 0, which changes nothing, is "
                             "lifted)")
    return lifter.lift(n.args[0])


HANDLERS: dict[str, Any] = {"aten.pad.default": lift_pad, "aten.constant_pad_nd.default": lift_pad}
