"""An embedding's count named after what it counts, and a head tied to the embedding named from the weight's use.

Axes are otherwise named by size, so a vocabulary as large as the width would be named like the width
(`hidden_size`), and a tied head `h[B, T, V] = h * wte.weight` could not tell its output axis from the one it sums.
The embedding's first axis counts tokens (or positions, or token types): when a config key saying so (`vocab`,
`position`, `type`) has its size, the count is written with that key (`embedding(ids, n_vocab, d_model)`), and a
head reading the embedding's weight names its output after the embedding's count, not after its size: the
transpose is told from which of the weight's axes the head sums (the features), not from the weight's shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter

_COUNTS = ("vocab", "position", "type")


def count_name(lifter: Lifter, path: str, num: int, dim: int, positions: bool = False) -> str:
    """The expression written for embedding `path`'s count `num` (of vectors of size `dim`; `positions`: it is
    read at `arange(T)`), remembered as the name of the weight's first axis."""
    words = ("position", "max_len", "ctx", "vocab", "type") if positions else _COUNTS
    keys = [k for w in words for k, v in lifter.dims.values.items() if v == num and w in k]
    if keys:
        lifter.dims.used.add(keys[0])
        name = keys[0]
    else:
        name = lifter.dims.expr(num)
        if name == lifter.dims.axis(dim):
            # no key names the count apart from the width: any other dim of that size will do
            other = next((k for k, v in lifter.dims.values.items() if v == num and k != name), None)
            if other is not None:
                lifter.dims.used.add(other)
                name = other
    lifter.embedding_counts[path] = name
    return name


def head_axis(lifter: Lifter, embedding: str, size: int) -> str:
    """The output axis of a head tied to `embedding` (the count it was written with), else the size's name."""
    name = lifter.embedding_counts.get(embedding)
    if name is None:
        emb = lifter.modules[embedding]
        name = count_name(lifter, embedding, int(emb.weight.shape[0]), int(emb.weight.shape[1]))
    return name if name.isidentifier() else lifter.dims.axis(size)
