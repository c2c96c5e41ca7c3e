"""The mixture-of-experts op's torch rules: its reference lowering beside its code emitter. Both run the sparse
dispatch `runtime.moe_swiglu` (copied into generated files): tokens sorted by expert, each expert's three products
on its routed tokens only, the weighted outputs added back with index_add_. It equals the op's dense gated sum,
whose unchosen terms are exactly zero (tests/test_moe_sparse.py checks values, gradients and FLOPs)."""

from __future__ import annotations

from typing import Any

from nnspec.backends.torch.frame import Frame
from nnspec.backends.torch.function import FunctionGen
from nnspec.backends.torch.layout import on_last, on_last_tensor
from nnspec.backends.torch.lazy import runtime
from nnspec.backends.torch.pysrc import Expr, call
from nnspec.backends.torch.rules import emits, lowers
from nnspec.compiler.ir import Node


@lowers("moe")
def _lower_moe(frame: Frame, node: Node, ins: list[Any]) -> Any:
    a = node.attrs
    return on_last_tensor(frame, node, ins[0],
                          lambda x: runtime.moe_swiglu(x, *ins[1:], a["k"], a["norm_topk_prob"]))


@emits("moe")
def _emit_moe(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    a = node.attrs
    helper = fn.mg.helper("moe_swiglu")
    return on_last(ins[0], fn.in_type(node, 0), a["axis"],
                   lambda x: call(helper, x, *ins[1:], k=a["k"], norm_topk_prob=a["norm_topk_prob"]))
