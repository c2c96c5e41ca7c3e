"""The lifted graph: each value of the captured program becomes an `L`, a spec expression over other `L`s with
the named axes of every torch dimension, owned by the block (module) whose code computed it.

Torch dims and the language's axes differ: a torch dim may hold several named axes merged (`(n_head head_dim)`
after a `view`) or none (a size-1 dim from `unsqueeze`, which the language's broadcasting by name makes
unnecessary). `axes` keeps, per torch dim, the tuple of axis names it holds; `order` is the axes' order in the
spec's value, which matters only where an annotation lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False)
class L:
    fmt: str                                  # the expression, with {0}, {1}, ... standing for refs
    refs: list[L]
    axes: list[tuple[str, ...]]               # per torch dim, the named axes it holds (empty: size 1, absent)
    order: list[str]                          # the axes in the spec value's order
    scope: str                                # the block (module path) computing it; "" is the body
    idx: float                                # position in the captured graph (statement order)
    atom: bool = True                         # a name, call or literal: safe to annotate or use as an operand
    hint: str = "h"                           # a variable name to use when bound
    bind: bool = False                        # always bound to a variable
    annot: str | None = None                  # bound as `var[annot] = fmt` (a contraction's target)
    names: list[str] = field(default_factory=list)   # a tuple's members' variable names (split)
    member: tuple[L, int] | None = None       # this is member i of a tuple L
    fixed: str | None = None                  # bound under this name (a model output)

    def flat(self) -> list[str]:
        return [a for group in self.axes for a in group]


def annotation(items: list[str | tuple[str, ...]]) -> str:
    """`[B, T, (n_head head_dim)]` from items, a tuple being a merged or split group. A merged axis's name
    (`n_head*head_dim`) cannot be written in an annotation: it is written as the group that splits it again, which
    is what the annotation means wherever it aligns items by position (`unmerged` gives the axes it makes)."""
    parts = [f"({' '.join(i)})" if isinstance(i, tuple) else f"({' '.join(i.split('*'))})" if "*" in i else i
             for i in items]
    names = [a for i in items for a in ((i,) if isinstance(i, str) else i)]
    if len(set(names)) != len(names):
        raise Unwritable(f"an annotation naming two axes alike ({', '.join(names)})")
    return "[" + ", ".join(parts) + "]"


class Unwritable(Exception):
    """A lifted value the language cannot write (an annotation naming two axes alike): the importer refuses it at
    the node being lifted."""


def unmerged(axes: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """The axes after a positional annotation wrote each merged name as its group: split into their pieces."""
    return [tuple(p for a in g for p in a.split("*")) for g in axes]


def merged_name(names: tuple[str, ...]) -> str:
    """The language's name for an axis merged from `names` (their sizes' product written with `*`)."""
    return "*".join(names)
