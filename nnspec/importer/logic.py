"""Boolean masks combined: `not`, `and`, `or` on bool tensors (a comparison negated, `where(not h <= 0, ...)`).

Torch computes them as `bitwise_not`/`bitwise_and`/`bitwise_or` (or the `logical_` ops); on bool tensors both are
the language's `not`, `and`, `or`, which broadcast by name like its arithmetic. The same ops on integers (bit
operations the language has no word for) are refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from nnspec.importer.graph import L

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter


def _all_bool(lifter: Lifter, n: fx.Node) -> bool:
    vals = [lifter.value(a) for a in n.args[:2] if isinstance(a, fx.Node)] + [lifter.value(n)]
    return all(isinstance(v, torch.Tensor) and v.dtype == torch.bool for v in vals)


def _not(lifter: Lifter, n: fx.Node) -> L:
    from nnspec.importer.ops import _scope_idx

    if not _all_bool(lifter, n):
        raise lifter.fail(n, "a bitwise not of integers")
    x = lifter.lift(n.args[0])
    if not isinstance(x, L):
        raise lifter.fail(n, "a not of a constant")
    scope, idx = _scope_idx(lifter, n)
    return L("not {0}", [x], x.axes, x.order, scope, idx, atom=False, hint=x.hint)


def _both(word: str) -> Any:
    def handler(lifter: Lifter, n: fx.Node) -> L:
        from nnspec.importer.ops import _binary

        if not _all_bool(lifter, n) or not all(isinstance(a, fx.Node) for a in n.args[:2]):
            raise lifter.fail(n, f"a bitwise {word} of integers or with a number")
        return _binary(lifter, n, word)
    return handler


HANDLERS: dict[str, Any] = {
    "aten.bitwise_not.default": _not, "aten.logical_not.default": _not,
    "aten.bitwise_and.Tensor": _both("and"), "aten.logical_and.default": _both("and"),
    "aten.bitwise_or.Tensor": _both("or"), "aten.logical_or.default": _both("or"),
    "aten.__and__.Tensor": _both("and"), "aten.__or__.Tensor": _both("or"),
}
