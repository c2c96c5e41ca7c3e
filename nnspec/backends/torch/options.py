"""The torch backend's explicit options: how it may emit code beyond the plain spelling of each op.

The pipeline chooses them (`-O2` turns both on); the backend never infers them from the optimisation level.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class TorchOptions:
    """`fused_linear`: linears (and `nn.Linear` members) through the `linear` helper / `Linear` module, which run
    oneDNN's linear with the epilogue's activation as a post-op on CPU inference (and an LM head's product with a
    [features, in] matrix the same way). `sdpa`: attention as `F.scaled_dot_product_attention` where its
    semantics match the spec's. `parallel_scan`: a scan whose step is a linear recurrence in its state
    (`nnspec.compiler.affine_scan`) as the `affine_scan` helper (all steps at once, chunked) instead of a loop.
    `regroup_contractions`: a contraction that no view makes one GEMM runs in another grouping (three operands as
    an elementwise product then a GEMM; a weight [k1, out, k2] as a GEMM batched over k1, then summed) rather
    than copying the weight as torch.einsum does; it sums in another order, so rounding differs. `kept_casts`: a
    parameter cast to another dtype (a bf16 model's LM head read in float32) is cast once and kept until the
    parameter changes (`cast_weight`, inference only), not on every call."""

    fused_linear: bool = False
    sdpa: bool = False
    parallel_scan: bool = False
    regroup_contractions: bool = False
    kept_casts: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TorchOptions:
        """The options from a name -> value mapping (every key must be an option's name)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown torch backend option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: bool(v) for k, v in values.items()})


HELP = {
    "fused_linear": "linears through the oneDNN `linear` helper with activation post-ops (CPU inference)",
    "sdpa": "attention as F.scaled_dot_product_attention where it computes what the spec does",
    "parallel_scan": "a scan whose state update is a * state + b as a chunked parallel scan, not a step loop",
    "regroup_contractions": "contractions regrouped so no weight is copied per call (rounding differs)",
    "kept_casts": "a parameter cast to another dtype kept across inference calls, not cast on every call",
}
