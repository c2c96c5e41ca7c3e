"""The check `apply(..., slice_width=W, rotation=Q)` makes of SliceGPT's rotation, without importing torch.

Q is whatever array the caller holds (a torch tensor, a numpy array); the check uses only what both share
(`.shape`, `.T`, `@`, `.diagonal()`, `.reshape`, slicing, `abs`, `.max()`), so the arithmetic runs in Q's own
library. It is `torch.allclose(Q^T Q, I, atol=1e-6)` (rtol 1e-5) on Q in float64, written out: off the
diagonal |(Q^T Q)_ij| <= atol, on it |(Q^T Q)_ii - 1| <= atol + rtol. The torch backend's `slice_params`
checks Q again where it converts the weights.
"""

from __future__ import annotations

from typing import Any

from nnspec.compiler.ir import Model
from nnspec.compiler.transforms.rewrite import TransformError
from nnspec.compiler.transforms.slicegpt import plan

ATOL, RTOL = 1e-6, 1e-5     # `slice_params`'s atol and torch.allclose's default rtol


def check_rotation(model: Model, rotation: Any) -> None:
    """Raise TransformError unless `rotation` is an orthogonal [D, D] matrix, D the width `model`'s residual
    stream has before slicing."""
    full = int(model.dims.concrete(plan(model).axis.size))
    if tuple(getattr(rotation, "shape", ())) != (full, full) or not _orthogonal(_float64(rotation), full):
        raise TransformError(f"--slice: the rotation must be an orthogonal {full} x {full} matrix")


def _float64(q: Any) -> Any:
    """`q` in float64 (a torch tensor's `.double()`, a numpy array's `.astype`), so a float32 Q is judged as
    precisely as `slice_params` uses it."""
    return q.double() if hasattr(q, "double") else q.astype("float64")


def _orthogonal(q: Any, n: int) -> bool:
    gram = q.T @ q
    if not bool(abs(gram.diagonal() - 1).max() <= ATOL + RTOL):
        return False
    if n == 1:
        return True
    # the n*n entries without the last, as rows of n+1, start each row on the diagonal: the rest is off it
    off = gram.reshape(-1)[:-1].reshape(n - 1, n + 1)[:, 1:]
    return bool(abs(off).max() <= ATOL)
