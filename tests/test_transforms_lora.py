"""--lora (and RandLoRA): outputs unchanged at initialisation, only adapters trainable, and `merge` folds the
adapters back, reproducing the adapted outputs and the original graph."""

from __future__ import annotations

import pytest
import torch
from _transforms_helpers import GPT2, LLAMA, checked, ids, params_of, run, verify_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnspec
from nnspec.backends.torch.interpreter import Interpreter
from nnspec.backends.torch.transform_params import convert_params, load_params, merge
from nnspec.compiler.printer import print_model
from nnspec.compiler.transforms import LoraSpec, TransformError, apply, lora, trainable_parameters
from nnspec.compiler.transforms.lora import parse_lora
from nnspec.testing import inputs_for, specs

CASES = [(GPT2, ["*.c_attn:4", "h.*.mlp.*:2:alpha=8"]), (LLAMA, ["*_proj:4"]),
         (GPT2, ["*.c_fc:4:randlora", "h.1.attn.c_proj:8"]), (LLAMA, ["*.self_attn.*:4:randlora"])]
IDS = ["gpt2-lora", "llama-lora", "gpt2-randlora", "llama-randlora"]


def _perturbed(params: dict[str, torch.Tensor], seed: int = 3) -> dict[str, torch.Tensor]:
    """Adapters as after some training: B (LoRA) and lambda, gamma (RandLoRA) random."""
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=gen) * 0.05 + (1 if k.endswith("gamma") else 0)
                if k.endswith(("lora_B", "randlora_lambda", "randlora_gamma")) else v) for k, v in params.items()}


@pytest.mark.parametrize(("spec", "loras"), CASES, ids=IDS)
def test_outputs_unchanged_at_initialisation(spec, loras) -> None:
    model = checked(spec)
    params = params_of(model)
    adapted = lora(model, loras)
    verify_model(adapted)
    x = ids(model)
    torch.testing.assert_close(run(adapted, convert_params(model, params, lora=loras), x)["logits"],
                               run(model, params, x)["logits"])


@pytest.mark.parametrize(("spec", "loras"), CASES, ids=IDS)
def test_only_adapters_are_trainable(spec, loras) -> None:
    adapted = lora(checked(spec), loras)
    trainable = trainable_parameters(adapted)
    assert trainable and all(p.rpartition(".")[2] in ("lora_A", "lora_B", "randlora_lambda", "randlora_gamma")
                             for p in trainable)
    interp = Interpreter(adapted)
    assert sorted(k for k, p in interp.named_spec_parameters().items() if p.requires_grad) == sorted(trainable)
    interp(**ids(checked(spec)))["logits"].sum().backward()
    assert all((p.grad is not None) == p.requires_grad for p in interp.named_spec_parameters().values())


@pytest.mark.parametrize(("spec", "loras"), CASES, ids=IDS)
def test_merge_reproduces_the_adapted_outputs_and_the_original_graph(spec, loras) -> None:
    model = checked(spec)
    adapted = lora(model, loras)
    params = _perturbed(convert_params(model, params_of(model), lora=loras))
    merged, merged_params = merge(adapted, params)
    verify_model(merged)
    x = ids(model)
    want = run(adapted, params, x)["logits"]
    assert not torch.allclose(want, run(model, params_of(model), x)["logits"])   # the adapters do something
    torch.testing.assert_close(run(merged, merged_params, x)["logits"], want, atol=1e-5, rtol=1e-4)
    assert print_model(merged) == print_model(model)
    assert trainable_parameters(merged) == trainable_parameters(model)


def test_a_pattern_for_one_layer_makes_a_variant() -> None:
    adapted, lines = apply(checked(GPT2), lora=["h.1.attn.c_attn:2"])
    (rep,) = [n for n in adapted.graph if n.op == "repeat"]
    ((index, variant),) = rep.attrs["variants"]
    assert index == 1
    assert [p for p in trainable_parameters(adapted)] == ["h.1.attn.c_attn.lora_A", "h.1.attn.c_attn.lora_B"]
    # A 2x32 + B 96x2
    assert lines[0].startswith("lora h.1.attn.c_attn:2: params ") and lines[0].endswith("trainable 256")
    inner = adapted.templates[variant]
    call = next(n for n in inner if n.op == "call" and n.attrs["scope"] == "attn")
    attention = adapted.templates[call.attrs["block"]]
    assert attention["c_attn"].meta["transform"] == "lora r=2"
    assert attention["c_attn_lora_up"].meta["lora"]["role"] == "branch"


def test_parse() -> None:
    assert parse_lora("*.c_attn:8") == LoraSpec("*.c_attn", 8)
    assert parse_lora("h.*:4:alpha=16:randlora") == LoraSpec("h.*", 4, 16.0, "randlora")
    assert LoraSpec("x", 4, 16.0).scale == 4.0
    for bad in ("*.c_attn", "*.c_attn:0", "*.c_attn:8:beta=2"):
        with pytest.raises(TransformError, match="--lora"):
            parse_lora(bad)


def test_a_pattern_matching_nothing_is_refused() -> None:
    with pytest.raises(TransformError, match=r"--lora \*\.q_proj:4: the pattern matches no linear"):
        lora(checked(GPT2), ["*.q_proj:4"])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_lora_on_random_specs(data: st.DataObject) -> None:
    """Adapters on every linear of a drawn spec: unchanged at init; exactly the new adapter parameters are
    trainable (RandLoRA: lambda and gamma, its random bases frozen) and only they get gradients; merge
    reproduces perturbed adapters."""
    model = nnspec.check(data.draw(specs(max_width=16, max_layers=2))).model
    kind = data.draw(st.sampled_from(["", ":randlora"]))
    try:
        adapted = lora(model, [f"*:2{kind}"])
    except TransformError:
        return      # no linear with its own weight
    verify_model(adapted)
    inputs = data.draw(inputs_for(model))
    params = params_of(model)
    new = convert_params(model, params, lora=[f"*:2{kind}"])
    added = set(new) - set(params)
    trained = {p for p in added if not kind or p.endswith(("randlora_lambda", "randlora_gamma"))}
    assert added and set(trainable_parameters(adapted)) == trained
    interp = Interpreter(adapted, seed=None).eval()
    load_params(interp, new)
    loss = sum(v.float().sum() for v in interp(**inputs).values() if v.dtype.is_floating_point)
    if isinstance(loss, torch.Tensor) and loss.requires_grad:    # not when no output depends on a parameter
        loss.backward()
    assert {k for k, p in interp.named_spec_parameters().items() if p.grad is not None} <= trained
    want = run(model, params, inputs)
    for name, value in run(adapted, new, inputs).items():
        torch.testing.assert_close(value, want[name])
    new = _perturbed(new)
    merged, merged_params = merge(adapted, new)
    want = run(adapted, new, inputs)
    for name, value in run(merged, merged_params, inputs).items():
        torch.testing.assert_close(value, want[name], atol=1e-4, rtol=1e-4)
    load_params(Interpreter(merged, seed=None), merged_params)
