"""randlora: full-rank adapters from frozen random bases with trainable diagonal scalings (RandLoRA,
Albert et al. 2025), the basic variant, chosen with `--lora PATTERN:RANK:randlora`.

For a matching `y = linear(x, W, b)` with W [out, in] and N = ceil(min(out, in) / rank) bases:

    delta_W = sum_n B_n diag(lambda_n) A_n diag(gamma_n)         y = linear(x, W, b) + x delta_W^T * scale

`{scope}.randlora_A` [N, rank, in] and `{scope}.randlora_B` [out, N, rank] are random and frozen
(`trainable=False`; normal with std 1/sqrt(in) and 1/sqrt(N rank)); `{scope}.randlora_lambda` [N, rank]
(zeros) and `{scope}.randlora_gamma` [N, in] (ones) are trained; scale = alpha / rank. The sum of N rank-r
terms can reach full rank while training only N (rank + in) numbers. In the graph:
`z = x . (A * gamma)` over `in`, `u = (z * lambda) . B` over the bases and rank.

Differences from the paper (and PEFT): the bases are drawn per adapted linear rather than shared by all layers,
and gamma scales the input side whatever the shape. Contract as LoRA's: outputs unchanged at initialisation
(lambda is zero), only lambda and gamma trainable, `merge` folds delta_W into W (its torch side,
`nnspec.backends.torch.transform_params.randlora_delta`, computes delta_W).
"""

from __future__ import annotations

import math
from typing import Any

import sympy

from nnspec.compiler.ir import Axis, Graph, Node, TensorType

TRAINED = "adapter"


def randlora_branch(graph: Graph, node: Node, scope: str, spec: Any, add: Any, sizes: Any) -> str:
    """Add the RandLoRA branch of linear `node` with `add(op, inputs, attrs, hint, role)`; returns x delta_W^T."""
    x = graph[node.inputs[0]].tensor_type
    w = graph[node.inputs[1]].tensor_type
    out_axis, in_w = w.axes
    in_axis = Axis(node.attrs["axis"], in_w.size)      # named as x's axis, so the contraction aligns by name
    out_n, in_n = int(sizes.concrete(out_axis.size)), int(sizes.concrete(in_w.size))
    bases = math.ceil(min(out_n, in_n) / spec.rank)
    n = Axis("randlora_n", sympy.Integer(bases))
    r = Axis("randlora_r", sympy.Integer(spec.rank))

    def param(leaf: str, axes: tuple[Axis, ...], init: tuple[Any, ...], trained: bool) -> str:
        attrs = {"path": f"{scope}.{leaf}", "type": TensorType(axes, w.dtype), "init": init}
        if not trained:
            attrs["trainable"] = False
        return add("param", [], attrs, f"{scope}_{leaf}", TRAINED if trained else "basis")

    a = param("randlora_A", (n, r, in_axis), ("normal", 1.0 / math.sqrt(in_n)), False)
    b = param("randlora_B", (out_axis, n, r), ("normal", 1.0 / math.sqrt(bases * spec.rank)), False)
    lam = param("randlora_lambda", (n, r), ("zeros",), True)
    gamma = param("randlora_gamma", (n, in_axis), ("ones",), True)
    scaled_a = add("mul", [a, gamma], {}, f"{scope}_randlora_Ag", "branch")
    rest = tuple(ax.name for ax in x.axes if ax.name != node.attrs["axis"])
    z = add("einsum", [node.inputs[0], scaled_a], {"out": (*rest, n.name, r.name)}, f"{scope}_randlora_z", "branch")
    zl = add("mul", [z, lam], {}, f"{scope}_randlora_zl", "branch")
    return add("einsum", [zl, b], {"out": node.tensor_type.names}, f"{scope}_randlora_up", "branch")

