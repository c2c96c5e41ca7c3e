"""Generated modules work with the libraries that wrap `nn.Linear` (PEFT here), at every -O level.

At -O2 fuse-linear computes q/k/v (and gate/up) as one matmul; the spec's linears must still be `nn.Linear`
modules, so `peft.get_peft_model` finds them, and a LoRA-wrapped layer must take part in the forward (the fused
matmul over the raw weights would silently skip the adapter). Expected values: the -O0 module, where every linear
is called as itself, with the same LoRA weights; and the same seed gives the same initial weights at every level
and on the Triton target.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nnspec
from tests._small_models import GPT2, LLAMA

peft = pytest.importorskip("peft")

LLAMA_TARGETS = ["q_proj", "v_proj", "gate_proj", "up_proj"]


def _build(name: str, opt: int, dims: dict, target: str = "torch") -> nn.Module:
    torch.manual_seed(0)
    return nnspec.build(f"examples/{name}.yaml", opt=opt, target=target, **dims)


def _lora_train(model: nn.Module, targets: list[str], x: torch.Tensor, steps: int = 3) -> tuple[list[float], nn.Module]:
    torch.manual_seed(1)   # the adapters' initial weights (non-zero B, so they change the output at once), dropout
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                         init_lora_weights=False))
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.5)
    losses = []
    for _ in range(steps):
        loss = wrapped(x).float().square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, wrapped


def test_every_spec_linear_is_an_nn_linear_at_every_level() -> None:
    kinds = {}
    for opt in (0, 1, 2):
        m = _build("llama", opt, LLAMA)
        kinds[opt] = {name: isinstance(mod, nn.Linear) for name, mod in m.named_modules()}
        assert all(kinds[opt][f"layers.0.self_attn.{p}"] for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
        assert all(kinds[opt][f"layers.1.mlp.{p}"] for p in ("gate_proj", "up_proj", "down_proj"))
    assert kinds[0] == kinds[1] == kinds[2]   # the same module tree, so the same state dict and PEFT targets


@pytest.mark.parametrize(("name", "dims", "targets", "x"), [
    ("llama", LLAMA, LLAMA_TARGETS, torch.arange(12).reshape(2, 6) % 101),
    # GPT-2's c_fc runs with its GELU as a oneDNN post-op at -O2: the adapter's update must come before the GELU
    ("gpt2", GPT2, ["c_attn", "c_fc"], torch.arange(10).reshape(2, 5) * 7 % 97),
])
def test_lora_on_o2_trains_like_lora_on_o0(name: str, dims: dict, targets: list[str], x: torch.Tensor) -> None:
    base = _build(name, 0, dims)
    fast = _build(name, 2, dims)
    fast.load_state_dict(base.state_dict())
    with torch.no_grad():
        plain = base.eval()(x)
    base.train()
    losses0, m0 = _lora_train(base, targets, x)
    losses2, m2 = _lora_train(fast, targets, x)
    assert losses0[0] != losses0[-1]   # it trains
    assert losses2 == pytest.approx(losses0, rel=1e-4, abs=1e-6)
    with torch.no_grad():
        y0, y2 = m0.eval()(x), m2.eval()(x)   # GPT-2 has dropout: compare without it
    torch.testing.assert_close(y2, y0, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(y0, plain, atol=1e-3)   # the adapters are in the output, at both levels
    adapters0 = {k: v for k, v in m0.state_dict().items() if "lora_" in k}
    adapters2 = {k: v for k, v in m2.state_dict().items() if "lora_" in k}
    assert adapters0.keys() == adapters2.keys() and adapters0
    for k in adapters0:
        torch.testing.assert_close(adapters2[k], adapters0[k], rtol=1e-4, atol=1e-6)


def test_merged_lora_runs_the_fused_matmul_again() -> None:
    """After `merge_and_unload` the layers are plain nn.Linear again and -O2 goes back to one matmul over the
    concatenated weights (kept between calls); its output equals the -O0 merged model's."""
    x = torch.arange(12).reshape(2, 6) % 101
    base, fast = _build("llama", 0, LLAMA), _build("llama", 2, LLAMA)
    merged = []
    for m in (base, fast):
        _, wrapped = _lora_train(m, LLAMA_TARGETS, x, steps=1)
        merged.append(wrapped.merge_and_unload())
    attn = merged[1].layers[0].self_attn
    assert type(attn.q_proj) is not nn.Module and isinstance(attn.q_proj, nn.Linear)
    with torch.no_grad():
        y0, y2 = merged[0](x), merged[1](x)
    torch.testing.assert_close(y2, y0, rtol=1e-4, atol=1e-5)
    assert attn.__dict__.get("_fused_weights")   # the concatenated q/k/v weights were made (and kept)


def test_hooks_on_a_fused_member_run() -> None:
    """A forward hook on one of a fused group's layers (how many tools observe a module) is honoured."""
    m = _build("llama", 2, LLAMA)
    seen = []
    m.layers[0].self_attn.k_proj.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    with torch.no_grad():
        m(torch.zeros(1, 4, dtype=torch.int64))
    assert seen == [torch.Size([1, 4, LLAMA["hidden_size"] // 4])]


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_same_seed_same_initial_weights_at_every_level_and_target(name: str) -> None:
    dims = {"gpt2": GPT2, "llama": LLAMA}[name]
    ref = _build(name, 0, dims).state_dict()
    for target, opt in (("torch", 1), ("torch", 2), ("triton", 0), ("triton", 2)):
        got = _build(name, opt, dims, target).state_dict()
        assert list(got) == list(ref), (target, opt)
        for k in ref:
            assert torch.equal(got[k], ref[k]), (target, opt, k)
