"""Causality folded into the attention's mask, so the combined mask is a value `hoist-invariant` moves out of the
layers: built once per forward instead of once per layer.

What it rewrites: an `attention` with `causal` set and a boolean mask `m` (Llama's or GPT-2's padding mask, given
to every layer) gets the mask `m & causal_mask(query, key)` instead, and the attribute `mask_causal` (the mask
already holds the causal triangle over its query and key axes). `causal` stays set. The `and` reads the layer's
mask argument and a source only, so when the attention runs in a repeated block, `hoist-invariant` moves it to the
graph that runs the repeat (then `cse` merges the layers' copies): the padding and causal masks are combined once.
The backends read `mask_causal` to hand the mask to the fused kernel as it is (SDPA takes one `attn_mask`, so
they and-ed the triangle in every layer before), and `absent_masks` to pass `None` for a mask that is the
triangle alone when `attention_mask` is left out (then SDPA's causal kernel runs, as before).

Why sound: the attention masks its scores where the mask is false and, being causal, where the key is after the
query; masking with `m & triangle` and then by the triangle again masks exactly where `m` or the triangle is false,
the same set, since and-ing with the triangle twice is and-ing once. The triangle is `causal_mask(query, key)`,
the op the attention's `causal` is defined by (`key index <= query index`, aligned at the start). Only the mask
input changes; every number the attention computes is the same, bit for bit.

Left alone: attentions that are not causal (no triangle to fold in, and a padding mask must not gain one), without
a mask, already rewritten, or with a mask whose axes are not among the scores' (never a valid attention).
"""

from __future__ import annotations

from dataclasses import dataclass

from nnspec.compiler.ir import Graph, Node
from nnspec.compiler.passes.base import Context


@dataclass(frozen=True)
class CausalIntoMask:
    name: str = "causal-into-mask"

    def apply(self, ctx: Context, graph: Graph) -> tuple[Graph, bool]:
        done = []
        for node in [n for n in graph if _foldable(n)]:
            _fold(ctx, graph, node)
            done.append(node.name)
        if done:
            ctx.explain.rewrite(self.name, graph, graph[done[0]], f"the causal triangle of {', '.join(done)} is "
                                "and-ed into the mask (mask_causal), a value hoist-invariant can move out of "
                                "repeated layers")
        return graph, bool(done)


def _foldable(node: Node) -> bool:
    a = node.attrs
    return node.op == "attention" and bool(a["causal"]) and bool(a["has_mask"]) and not a.get("mask_causal", False)


def _fold(ctx: Context, graph: Graph, node: Node) -> None:
    a = node.attrs
    q_t, k_t = graph[node.inputs[0]].tensor_type, graph[node.inputs[1]].tensor_type
    q_axis, k_axis = q_t.axis(a["query"]), k_t.axis(a["key"])
    assert q_axis is not None and k_axis is not None, "a verified attention names axes of q and k"
    tri_attrs = {"q": q_axis, "k": k_axis}
    triangle = graph.insert_before(node.name, "causal_mask", [], tri_attrs, ctx.infer("causal_mask", [], tri_attrs),
                                   node.span, hint="causal")
    mask = node.inputs[3]
    both = graph.insert_before(node.name, "logical_and", [mask, triangle.name], {},
                               ctx.infer("logical_and", [graph[mask].type, triangle.type], {}), node.span,
                               hint="allowed")
    graph.set_input(node.name, 3, both.name)
    node.attrs = {**a, "mask_causal": True}
