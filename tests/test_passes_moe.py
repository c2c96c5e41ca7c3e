"""MoE recognition: the dense gated form of a top-k mixture of SwiGLU experts planted in its spellings (softmax
before or after the top-k, renormalised or not, the gated sum in one product, in two, or as a sum of a product;
a router written as a linear or as a product with a parameter; a shared expert beside it; in a block and a repeat)
becomes one `moe` op with the same outputs; near misses are refused with a reason and left as they were.

The dense form, run by the reference interpreter on the unoptimised graph, is the independent reference: every
expert on every token, weighted by a scattered routing weight that is zero for the unchosen ones.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import pytest

pytest.importorskip("torch")

from test_passes_support import assert_idempotent, assert_same_outputs, count, optimized

ROUTINGS = {   # how the scattered weights w come from the router logits; the moe op's norm_topk_prob
    "softmax_after": ("top, idx = topk(logits, k, over=E, into=K)\nw = softmax(top, over=K)", True),
    "softmax_before": ("top, idx = topk(softmax(logits, over=E), k, over=E, into=K)\nw = top", False),
    "softmax_before_renormalised": ("top, idx = topk(softmax(logits, over=E), k, over=E, into=K)\n"
                                    "w = top / sum(top, over=K)", True),
}
COMBINES = {   # the gated sum over E of each expert's down(silu(gate x) * up x)
    "one_product": "y[B, T, d] = gates * (silu(g) * u) * param(E, d, ff, name=down_proj)",
    "two_products": "o[B, T, E, d] = silu(g) * u * param(E, d, ff, name=down_proj)\ny[B, T, d] = gates * o",
    "sum_of_product": "o[B, T, E, d] = silu(g) * u * param(E, d, ff, name=down_proj)\ny = sum(gates * o, over=E)",
}
ROUTERS = {"linear": "logits = linear(x, E, bias=false, name=router)",
           "einsum": "logits[B, T, E] = x * param(E, d, name=router)"}


@dataclass(frozen=True)
class Case:
    routing: str = "softmax_after"
    combine: str = "one_product"
    router: str = "linear"
    shared: bool = False
    where: str = "body"       # body, block, repeat
    near_miss: str = ""


def moe_lines(c: Case) -> list[str]:
    routing = ROUTINGS[c.routing][0]
    zeros = "zeros(B, T, E)"
    reduce = ""
    router = ROUTERS[c.router]
    gate = "g[B, T, E, ff] = x * param(E, ff, d, name=gate_proj)"
    up = "u[B, T, E, ff] = x * param(E, ff, d, name=up_proj)"
    combine = COMBINES[c.combine]
    if c.near_miss == "into_ones":
        zeros = "full(0.5, B, T, E)"
    if c.near_miss == "accumulates":
        reduce = ", reduce=\"add\""
    if c.near_miss == "router_bias":
        router = "logits = linear(x, E, bias=true, name=router)"
    if c.near_miss == "gate_transposed":
        gate = "g[B, T, E, ff] = x * param(E, d, ff, name=gate_proj)"
    if c.near_miss == "plain_mlp":
        combine = combine.replace("silu(g) * u", "silu(g)")
    if c.near_miss == "gelu":
        combine = combine.replace("silu(g)", "gelu(g)")
    if c.near_miss == "double_softmax":
        routing = "top, idx = topk(softmax(logits, over=E), k, over=E, into=K)\nw = softmax(top, over=K)"
    lines = [router, *routing.split("\n"), f"gates = scatter({zeros}, idx, w, over=E{reduce})", gate, up,
             *combine.split("\n")]
    if c.near_miss == "activations_reused":
        lines.append("y = y + sum(sum(u, over=E), over=ff)")
    if c.shared:
        lines.append("s = linear(silu(linear(x, ff, bias=false, name=shared_gate)) * linear(x, ff, bias=false, "
                     "name=shared_up), d, bias=false, name=shared_down)")
        lines.append("y = y + sigmoid(sum(linear(x, 1, bias=false, name=shared_expert_gate), over=1)) * s")
    return lines


def spec_text(c: Case) -> str:
    lines = moe_lines(c)
    head = "nnspec: 1\nname: planted_moe\ndims: {d: 12, ff: 10, E: 5, k: 2}\ninputs:\n  x: float32[B, T, d]\n" \
           "outputs:\n  y: float32[B, T, d]\n"
    if c.where == "body":
        return head + "body: |\n" + textwrap.indent("\n".join(lines), "  ") + "\n"
    block = "blocks:\n  layer(x): |\n" + textwrap.indent("\n".join(lines) + "\nreturn x + y", "    ") + "\n"
    call = "y = layer(x, name=layer)" if c.where == "block" else "y = repeat(2, layer, x, name=layers)"
    return head + block + f"body: |\n  {call}\n"


def _fires(c: Case) -> tuple[bool, list[str]]:
    before, after, explain = optimized(spec_text(c))
    fired = count(after, "moe") > 0
    assert_same_outputs(before, after)
    if fired:
        assert_idempotent(after)
    return fired, explain


PLANTED = [Case(routing=r, combine=m) for r in ROUTINGS for m in COMBINES] + [
    Case(router="einsum"), Case(routing="softmax_before", shared=True), Case(shared=True, where="block"),
    Case(routing="softmax_before_renormalised", combine="two_products", where="repeat")]


@pytest.mark.parametrize("case", PLANTED, ids=lambda c: f"{c.routing}-{c.combine}-{c.router}-{c.where}"
                         f"{'-shared' if c.shared else ''}")
def test_planted_dense_moe_becomes_the_moe_op_with_the_same_outputs(case: Case) -> None:
    fired, explain = _fires(case)
    assert fired, explain
    _, after, _ = optimized(spec_text(case))
    node = next(n for g in after.graphs() for n in g if n.op == "moe")
    assert node.attrs["k"] == 2 and node.attrs["norm_topk_prob"] == ROUTINGS[case.routing][1]
    assert count(after, "scatter") == 0 and count(after, "topk") == 0      # the dense form is gone
    rewrite = [line for line in explain if "rewrite [moe]" in line]
    assert rewrite and "runs only the chosen experts" in rewrite[0]


def test_the_state_dict_is_unchanged() -> None:
    from test_passes_support import state
    before, after, _ = optimized(spec_text(Case(shared=True)))
    assert state(before) == state(after)


NEAR_MISSES = {
    "into_ones": "not zeros",
    "accumulates": "accumulates",
    "router_bias": "has a bias",
    "gate_transposed": "is not a parameter [E, I, d]",
    "plain_mlp": "not silu(gate)·up",
    "gelu": "not SwiGLU",
    "double_softmax": "router logits come from softmax",
    "activations_reused": "dense products would stay",
}


@pytest.mark.parametrize("miss", list(NEAR_MISSES))
def test_near_misses_are_refused_with_a_reason(miss: str) -> None:
    fired, explain = _fires(Case(near_miss=miss))
    assert not fired
    refused = [line for line in explain if "refused [moe]" in line]
    assert refused and NEAR_MISSES[miss] in refused[0], explain


def test_runs_at_O2_only_and_by_name() -> None:
    text = spec_text(Case())
    assert count(optimized(text, level=1)[1], "moe") == 0
    assert count(optimized(text, level=0, passes="moe")[1], "moe") == 1


def test_training_gradients_equal_the_dense_form() -> None:
    """nnspec.build at -O2 (the pass fires; training-mode graphs) and -O0 (the dense form) on the same weights:
    the same outputs and the same gradient for every parameter and the input."""
    import torch

    import nnspec
    from nnspec.generated import compile_spec

    text = spec_text(Case(routing="softmax_before", shared=True))
    assert "moe_swiglu(" in compile_spec(text, opt=2).source and "moe_swiglu(" not in compile_spec(text).source
    dense, sparse = nnspec.build(text, opt=0), nnspec.build(text, opt=2)
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(3))
    probe = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(4))
    grads = []
    for model in (dense, sparse):
        xi = x.clone().requires_grad_()
        (model(x=xi) * probe).sum().backward()
        grads.append({"x": xi.grad, **{k: p.grad for k, p in model.named_parameters()}})
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=1e-4, atol=1e-5, msg=key)
