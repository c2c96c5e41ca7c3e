"""`moe(...)`: a top-k mixture of SwiGLU experts, against a hand-written Mixtral-style sparse MoE block in plain
PyTorch (each expert run on the tokens routed to it), against Hugging Face's MixtralSparseMoeBlock (random weights
from a config, copied over) where transformers has it, in the reference interpreter and the generated module
(-O0/-O2, torch and triton targets); parameters and active FLOPs by hand; mistakes are located."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nnspec
from nnspec.backends.torch import Interpreter
from nnspec.compiler.transforms import apply

H, I, E, K = 16, 24, 4, 2

SPEC = f"""\
nnspec: 1
name: moe_layer
dims: {{d: {H}, ff: {I}, n_experts: {E}}}
inputs:
  x: float32[B, T, d]
outputs:
  y: float32[B, T, d]
body: |
  y = moe(x, n_experts, ff, {K}, name=moe)
"""


def sparse_moe(x: torch.Tensor, router: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
               k: int, renormalise: bool) -> torch.Tensor:
    """Mixtral's sparse MoE block, written out: route each token to its top-k experts by softmax probability
    (renormalised over the k, or not as Qwen2-MoE's norm_topk_prob=False), run each expert's SwiGLU MLP only on the
    tokens routed to it, and add its output scaled by the routing weight."""
    tokens = x.reshape(-1, x.shape[-1])
    probs = torch.softmax(tokens @ router.T, dim=-1)
    weights, chosen = torch.topk(probs, k, dim=-1)
    if renormalise:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(tokens)
    for e in range(router.shape[0]):
        rows, slot = torch.nonzero(chosen == e, as_tuple=True)
        if len(rows) == 0:
            continue
        h = tokens[rows]
        y = (F.silu(h @ gate[e].T) * (h @ up[e].T)) @ down[e].T
        out.index_add_(0, rows, y * weights[rows, slot, None])
    return out.reshape(x.shape)


def randomised(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    state = {k: 0.3 * torch.randn_like(v) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    return state


def reference(state: dict[str, torch.Tensor], x: torch.Tensor, renormalise: bool = True) -> torch.Tensor:
    return sparse_moe(x, state["moe.router"], state["moe.gate_proj"], state["moe.up_proj"], state["moe.down_proj"],
                      K, renormalise)


@pytest.mark.parametrize("renormalise", [True, False])
def test_matches_a_hand_written_sparse_moe_block(renormalise: bool) -> None:
    text = SPEC if renormalise else SPEC.replace("name=moe)", "norm_topk_prob=false, name=moe)")
    interp = Interpreter(nnspec.check(text).model).eval()
    state = randomised(interp.root)
    x = torch.randn(3, 7, H)
    want = reference(state, x, renormalise)
    torch.testing.assert_close(interp(x=x)["y"], want)
    for opt in (0, 2):
        model = nnspec.build(text, opt=opt).eval()
        model.load_state_dict(state)
        torch.testing.assert_close(model(x=x), want)


def test_renormalising_changes_the_result() -> None:
    """The option is not inert: without renormalisation the k weights sum to less than 1."""
    interp = Interpreter(nnspec.check(SPEC).model).eval()
    state = randomised(interp.root)
    x = torch.randn(2, 3, H)
    assert not torch.allclose(reference(state, x, True), reference(state, x, False))


def test_matches_hugging_face_mixtral_sparse_moe_block() -> None:
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    from transformers import MixtralConfig
    config = MixtralConfig(hidden_size=H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=K)
    block = mixtral.MixtralSparseMoeBlock(config).eval()
    interp = Interpreter(nnspec.check(SPEC).model).eval()
    state = randomised(interp.root)
    with torch.no_grad():
        block.gate.weight.copy_(state["moe.router"])
        if hasattr(block.experts, "gate_up_proj"):     # transformers 5: stacked, gate then up along dim 1
            block.experts.gate_up_proj.copy_(torch.cat([state["moe.gate_proj"], state["moe.up_proj"]], dim=1))
            block.experts.down_proj.copy_(state["moe.down_proj"])
        else:                                          # transformers 4: one module per expert, w1 gate, w3 up
            for e, expert in enumerate(block.experts):
                expert.w1.weight.copy_(state["moe.gate_proj"][e])
                expert.w3.weight.copy_(state["moe.up_proj"][e])
                expert.w2.weight.copy_(state["moe.down_proj"][e])
        x = torch.randn(2, 5, H)
        want = block(x)
        want = want[0] if isinstance(want, tuple) else want     # transformers 4 also returns the router logits
        torch.testing.assert_close(interp(x=x)["y"], want)
        model = nnspec.build(SPEC, opt=2).eval()
        model.load_state_dict(state)
        torch.testing.assert_close(model(x=x), want)


def test_hidden_axis_in_the_middle() -> None:
    text = SPEC.replace("x: float32[B, T, d]", "x: float32[B, d, T]").replace("y: float32[B, T, d]",
                                                                            "y: float32[B, d, T]").replace(
        "name=moe)", "over=d, name=moe)")
    interp = Interpreter(nnspec.check(text).model).eval()
    state = randomised(interp.root)
    x = torch.randn(2, H, 5)
    want = reference(state, x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(interp(x=x)["y"], want)
    model = nnspec.build(text, opt=0).eval()
    model.load_state_dict(state)
    torch.testing.assert_close(model(x=x), want)


def test_parameters_and_active_flops() -> None:
    result = nnspec.check(SPEC)
    assert result.params == E * H + 3 * E * I * H              # the router and three stacked expert matrices
    b, t = sorted(result.flops.free_symbols, key=str)
    router = 2 * H * E + 5 * E                                 # its product and softmax, per token
    expert = 6 * H * I + 5 * I + 2 * H                         # three products, silu·up, the weighted add
    assert result.flops.subs({b: 2, t: 3}) == 2 * 3 * (router + K * expert)   # only the k chosen experts count


def test_bf16_runs_the_experts_in_bf16_and_stays_close() -> None:
    result = nnspec.check(SPEC)
    low, _ = apply(result.model, dtype="bf16")
    node = next(n for n in low.graph if n.op == "moe")
    assert {low.graph[i].type.dtype.value for i in node.inputs} == {"bfloat16"}
    interp = Interpreter(result.model).eval()
    state = randomised(interp.root)
    low_interp = Interpreter(low).eval()
    low_interp.root.load_state_dict({k: v.to(torch.bfloat16) for k, v in state.items()})
    x = torch.randn(2, 4, H)
    torch.testing.assert_close(low_interp(x=x)["y"].float(), reference(state, x), atol=0.1, rtol=0.05)


def test_triton_target_runs_it_as_torch_code() -> None:
    model = nnspec.build(SPEC, target="triton", opt=2).eval()
    state = randomised(model)
    x = torch.randn(1, 3, H)
    torch.testing.assert_close(model(x=x), reference(state, x))


@pytest.mark.parametrize(("body", "at", "code", "message"), [
    ("moe(x, n_experts, ff, 5)", "5", "E012", "k=5 must be between 1 and the number of experts (4)"),
    ("moe(x, n_experts, ff, 0)", "0", "E012", "k=0 must be between 1"),
    ("moe(x, n_experts, ff, 2, over=Q)", "Q", "E017", "no axis 'Q'"),
    ("moe(x, n_experts, ff)", "moe", "E019", "needs argument 'k'"),
])
def test_mistakes_are_located(body: str, at: str, code: str, message: str) -> None:
    with pytest.raises(nnspec.SpecError) as err:
        nnspec.check(SPEC.replace("moe(x, n_experts, ff, 2, name=moe)", body))
    assert err.value.code == code and message in err.value.message
    assert (err.value.span.line, err.value.span.col) == (9, len("  y = ") + body.index(at) + 1)
