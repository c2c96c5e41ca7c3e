"""The Triton backend's lowering table: for every graph op, the kernel that computes it or the torch fallback.

`kernel` names what runs on the GPU: `generated` (a pointwise kernel generated from the group's IR nodes),
or a template in `nnspec.backends.triton.kernels`. `fallback` says when and why the op runs as the torch
backend's code instead; an op with a kernel may still fall back for layouts the kernel does not take (the
generator says which with `--explain`). A test fails when an op has no entry, and every entry is executed by
the Triton tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from nnspec.backends.triton.pointwise import RULES
from nnspec.compiler.ops.registry import with_trait


@dataclass(frozen=True)
class Lowering:
    kernel: str | None     # what computes it inside a Triton kernel, if anything
    fallback: str | None   # when (and why) it runs as torch code instead


GENERATED = "generated pointwise kernel (fusion groups and lone ops)"

TABLE: dict[str, Lowering] = {
    # the pointwise ops the kernel generator has a rule for (a pointwise op it lacks has no entry: a test names it)
    **{op: Lowering(GENERATED, "when a member cannot be expressed (pow with a tensor exponent)")
       for op in sorted(RULES)},
    "rotary": Lowering("template rotary", "positions over axes other than x's leading ones"),
    "layernorm": Lowering("template layernorm (+ residual add in add_norm groups; forward and backward)", None),
    "rmsnorm": Lowering("template rmsnorm (+ residual add in add_norm groups; forward and backward)", None),
    "softmax": Lowering("template softmax", None),
    "attention": Lowering("template flash attention (causal, GQA, mask, bias; SDPA while training with dropout); "
                          "in a decoding step, over the KV cache, template flash-decoding",
                          "axes that are not batch/heads x positions x features; dropout with a bool mask"),
    "embedding": Lowering("template embedding", None),
    "linear": Lowering(None, "matmul: torch (cuBLAS on a GPU); its epilogue ops are kernels"),
    "einsum": Lowering(None, "contraction: torch matmul or einsum (cuBLAS on a GPU)"),
    "conv": Lowering(None, "convolution: torch (cuDNN on a GPU)"),
    "conv_transpose": Lowering(None, "transposed convolution: torch (cuDNN on a GPU)"),
    "interpolate": Lowering(None, "resampling: torch F.interpolate"),
    "moe": Lowering("template moe (a grouped-GEMM kernel per projection over the tokens sorted by expert; routing, "
                    "gather and index_add_ back in torch)", None),
    "pool": Lowering(None, "pooling: torch"),
    "batchnorm": Lowering(None, "batch statistics and running-stat updates: torch"),
    "groupnorm": Lowering(None, "statistics over channel groups and positions: torch F.group_norm"),
    "sum": Lowering(None, "reduction: torch"),
    "mean": Lowering(None, "reduction: torch"),
    "amax": Lowering(None, "reduction: torch"),
    "amin": Lowering(None, "reduction: torch"),
    "cumsum": Lowering(None, "scan along an axis: torch"),
    "topk": Lowering(None, "selection: torch"),
    "sort": Lowering(None, "sorting: torch"),
    "gather": Lowering(None, "indexed read: torch"),
    "scatter": Lowering(None, "indexed write: torch"),
    "concat": Lowering(None, "copy into one tensor: torch.cat (fused weights: once, kept until they change)"),
    "stack": Lowering(None, "copy into one tensor: torch.stack"),
    "drop_path": Lowering(None, "one random draw per sample, broadcast over the rest: torch (the drop_path helper)"),
    "rearrange": Lowering(None, "a view (permute/reshape): no computation"),
    "select": Lowering(None, "a view: no computation"),
    "slice": Lowering(None, "a view: no computation"),
    "sinusoidal": Lowering(None, "a position table built once per call: torch"),
    "rotary_tables": Lowering(None, "the cos/sin tables, once per forward: torch (the rotary kernel reads them)"),
    "arange": Lowering(None, "creates a tensor: torch"),
    "causal_mask": Lowering(None, "creates a tensor: torch"),
    "full": Lowering(None, "creates a tensor: torch"),
    "const": Lowering(None, "a scalar: a literal inside kernels, else a torch tensor"),
    "param": Lowering(None, "a module parameter"),
    "buffer": Lowering(None, "a module buffer"),
    "input": Lowering(None, "a forward() argument"),
    "call": Lowering(None, "a block call: Python"),
    "repeat": Lowering(None, "a loop over blocks: Python"),
    "scan": Lowering(None, "a sequential loop: Python"),
    "getitem": Lowering(None, "a tuple element: Python"),
}

# ops that compute no values of their own (sources but costly tables, structure and views): their torch code is not
# reported as a fallback, nor counted when measuring how much of a model's work runs inside kernels
NOT_COMPUTE = (with_trait("source") - with_trait("costly_source")) | with_trait("structure") | with_trait("view")
MATMUL = with_trait("matmul")
