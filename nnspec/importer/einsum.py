"""`torch.einsum` as the language's named contraction `out[I, J] = a * b * c`.

Each equation letter stands for the named axes of the operands' dim it labels: the operands must agree on them
(a single name that differs is relabelled, as a matmul's summed axis is), different letters get different names
(a clash is relabelled `S` or `NAME_k`), and the target lists the output letters' names. The language sums every
axis missing from the target over the factors that share it, which is einsum's meaning when each summed letter
labels at least two operands; a letter summed within one operand alone is refused (a plain `sum` the importer
does not write here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx

from nnspec.importer.graph import L

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter


def _einsum(lifter: Lifter, n: fx.Node) -> L:
    from nnspec.importer.ops import _scope_idx, _split_merged
    from nnspec.importer.patterns import relabel

    eq, operands = n.args[0], list(n.args[1])
    if not isinstance(eq, str) or "..." in eq or "->" not in eq:
        raise lifter.fail(n, "an einsum with an implicit output or an ellipsis")
    lhs, out = eq.replace(" ", "").split("->")
    specs = lhs.split(",")
    xs = [lifter.lift(o) for o in operands]
    if len(specs) != len(xs) or any(not isinstance(x, L) or len(x.axes) != len(s) for x, s in zip(xs, specs,
                                                                                                  strict=False)):
        raise lifter.fail(n, "an einsum over constants or with subscripts that do not match the operands")
    scope, idx = _scope_idx(lifter, n)
    letter: dict[str, tuple[str, ...]] = {}
    for k, spec in enumerate(specs):
        x = _split_merged(lifter, n, xs[k], scope, idx - 0.2)
        for ch, group in zip(spec, list(x.axes), strict=True):
            if not group:
                continue                      # a size-1 dim broadcasts
            want = letter.get(ch)
            if want is None:
                taken = {a for c, g in letter.items() if c != ch for a in g}
                if len(group) == 1 and group[0] in taken:
                    new = "S" if "S" not in taken | set(x.flat()) else f"{group[0]}_k"
                    x = relabel(lifter, x, group[0], new, scope, idx - 0.1)
                    group = (new,)
                elif set(group) & taken:
                    raise lifter.fail(n, f"an einsum whose letters share axes {group}")
                letter[ch] = group
            elif want != group:
                if len(want) != 1 or len(group) != 1 or want[0] in x.flat():
                    raise lifter.fail(n, f"an einsum letter {ch} over axes {want} and {group}")
                x = relabel(lifter, x, group[0], want[0], scope, idx - 0.1)
        xs[k] = x
    for ch in set(lhs.replace(",", "")) - set(out):
        if sum(ch in spec for spec in specs) < 2 and letter.get(ch):
            raise lifter.fail(n, f"an einsum summing letter {ch} within one operand")
    axes = [letter.get(ch, ()) for ch in out]
    names = [a for g in axes for a in g]
    fmt = " * ".join(f"{{{k}}}" for k in range(len(xs)))
    node = L(fmt, xs, axes, names, scope, idx, atom=False, hint="s", bind=True)
    node.annot = ", ".join(names)
    return node


HANDLERS: dict[str, Any] = {"aten.einsum.default": _einsum}
