"""A batch norm module (`nn.BatchNorm1d/2d/3d`) in eval mode as the language's `batchnorm(x, over=C)`.

Torch normalises dim 1 (the channels) with the running statistics; the language names that axis (`over=hidden`),
wherever the value holds it, so the `movedim`s a channels-last model wraps round the module write nothing. The
recognition is checked by recomputing `F.batch_norm` with the module's statistics on the captured input. Its
running statistics are buffers, which `nnspec.load_weights` maps after the module's weight (`P.running_mean`
follows `P.weight`), so the weights section needs no rule of its own for them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from nnspec.importer.graph import L

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter

def lift_batchnorm(lifter: Lifter, mod: nn.Module, n: fx.Node, x: L, xv: Any, yv: Any, name: str, call: Any) -> L:
    if mod.training or not mod.track_running_stats or mod.running_mean is None or not mod.affine:
        raise lifter.fail(n, "a batch norm other than an affine one with running statistics, in eval mode")
    if not isinstance(xv, torch.Tensor) or xv.dim() < 2 or len(x.axes[1]) != 1:
        raise lifter.fail(n, "a batch norm whose channel dim holds no one named axis")
    ref = F.batch_norm(xv, mod.running_mean, mod.running_var, mod.weight, mod.bias, False, 0.0, mod.eps)
    if not (isinstance(yv, torch.Tensor) and yv.shape == ref.shape and torch.allclose(ref, yv, atol=1e-5)):
        raise lifter.fail(n, f"module {type(mod).__name__} computes something else than batchnorm")
    extra = "" if mod.eps == 1e-5 else f", eps={mod.eps!r}"
    extra += "" if mod.momentum in (0.1, None) else f", momentum={mod.momentum!r}"
    return call(f"batchnorm({{0}}, over={x.axes[1][0]}{extra}, name={name})", x.axes, x.order, "batchnorm")

