"""--share: consecutive iterations of a repeat share one set of weights; the parameter count drops
accordingly and one optimizer step updates each shared weight once, by the sum of its uses' gradients."""

from __future__ import annotations

import pytest
import torch
from _transforms_helpers import GPT2, LLAMA, checked, ids, params_of, run, verify_model
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import nnspec
from nnspec.backends.torch.interpreter import Interpreter
from nnspec.backends.torch.transform_params import convert_params, load_params
from nnspec.compiler.analysis import Analysis
from nnspec.compiler.ir import repeat_plan
from nnspec.compiler.transforms import TransformError, apply, share
from nnspec.compiler.transforms.rewrite import instances
from nnspec.testing import inputs_for, specs


def test_groups_are_consecutive_and_params_drop_accordingly() -> None:
    model = checked(GPT2)
    out, lines = apply(model, share=["h:2"])
    verify_model(out)
    (rep,) = [n for n in out.graph if n.op == "repeat"]
    assert rep.attrs["groups"] == 2 and [sub for _, sub in repeat_plan(rep.attrs)] == ["0", "0", "1", "1"]
    per_layer = Analysis(model).graph_params("layer")
    assert Analysis(model).total_params() - Analysis(out).total_params() == 2 * per_layer
    assert {p.path.split(".")[1] for p in Analysis(out).parameters() if p.path.startswith("h.")} == {"0", "1"}
    assert lines == [f"share h:2: params {Analysis(model).total_params():,} -> {Analysis(out).total_params():,} "
                     f"({-2 * per_layer:+,})"]
    assert out.weight_maps == {} and rep.meta["transform"] == "share 2 groups of 2"


def test_a_group_starts_from_its_first_iteration() -> None:
    """The shared model computes what the original computes when each group's layers have equal weights."""
    model = checked(LLAMA)
    params = params_of(model)
    out = share(model, [("layers", 1)])
    tied = {k: params[k.replace("layers.1.", "layers.0.").replace("layers.2.", "layers.0.")] for k in params}
    torch.testing.assert_close(run(out, convert_params(model, params, share=["layers:1"]), ids(model))["logits"],
                               run(model, tied, ids(model))["logits"])


def test_one_step_updates_each_shared_weight_once_by_the_sum_of_its_gradients() -> None:
    model = checked(GPT2)
    params = params_of(model)
    shared = share(model, [("h", 2)])
    # reference: the untied model with each group's layers starting equal
    untied = {k: params[k.replace("h.1.", "h.0.").replace("h.3.", "h.2.")] for k in params}
    a = Interpreter(shared, seed=None).eval()
    load_params(a, convert_params(model, params, share=["h:2"]))
    b = Interpreter(model, seed=None).eval()
    load_params(b, untied)
    x = ids(model)
    for m in (a, b):
        m(**x)["logits"].square().mean().backward()
    grads_a = {k: p.grad for k, p in a.named_spec_parameters().items()}
    grads_b = {k: p.grad for k, p in b.named_spec_parameters().items()}
    name = "attn.c_attn.weight"
    torch.testing.assert_close(grads_a[f"h.1.{name}"], grads_b[f"h.2.{name}"] + grads_b[f"h.3.{name}"])
    # the optimizer sees each shared tensor once
    assert len(list(a.parameters())) == len(list(a.named_spec_parameters()))
    before = a.named_spec_parameters()[f"h.1.{name}"].detach().clone()
    torch.optim.SGD(a.parameters(), lr=0.1).step()
    torch.testing.assert_close(a.named_spec_parameters()[f"h.1.{name}"].detach(), before - 0.1 * grads_a[f"h.1.{name}"])


@pytest.mark.parametrize(("spec", "message"), [
    ("h:3", "--share h:3: 3 groups do not divide the 4 iterations of h"),
    ("hh:2", "--share hh: no repeat at that path (did you mean h?)"),
    ("h", "--share takes REPEAT:GROUPS (e.g. h:4), got 'h'"),
])
def test_refuses(spec: str, message: str) -> None:
    with pytest.raises(TransformError) as err:
        apply(checked(GPT2), share=[spec])
    assert str(err.value).startswith(message)


def test_refuses_a_repeat_with_dropped_branches_in_a_group() -> None:
    with pytest.raises(TransformError, match="iterations of one group run different blocks"):
        apply(checked(GPT2), drop=["h.1.attn"], share=["h:2"])


def _repeats(model: nnspec.compiler.ir.Model) -> list[tuple[str, int]]:
    return [(prefix + n.attrs["scope"], n.attrs["count"]) for prefix, g in instances(model) for n in g
            if n.op == "repeat" and not n.attrs["shared"] and n.attrs["count"] > 1]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.data())
def test_share_on_random_specs(data: st.DataObject) -> None:
    """A drawn repeat shared in one group: params drop by (count - 1) layers' worth; the model runs as the
    original with every layer given the first one's weights, and each shared weight's gradient is the sum of
    that original's gradients over the layers."""
    model = nnspec.check(data.draw(specs(max_width=16, max_layers=3))).model
    repeats = _repeats(model)
    assume(repeats)
    path, count = data.draw(st.sampled_from(repeats))
    out = share(model, [(path, 1)])
    verify_model(out)
    before, after = Analysis(model), Analysis(out)
    layer0 = sum(int(model.dims.concrete(p.type.numel())) for p in before.parameters()
                 if p.path.startswith(f"{path}.0."))
    assert before.total_params() - after.total_params() == (count - 1) * layer0 * (
        len([p for p in _repeats(model) if p[0] == path]))
    params = params_of(model)
    tied = {k: params[_first(k, path)] for k in params}
    inputs = data.draw(inputs_for(model))
    want, got = run(model, tied, inputs), run(out, convert_params(model, params, share=[f"{path}:1"]), inputs)
    for name in want:
        torch.testing.assert_close(got[name], want[name])
    grads_shared = _grads(out, convert_params(model, params, share=[f"{path}:1"]), inputs)
    grads_tied = _grads(model, tied, inputs)
    for key, grad in grads_shared.items():
        uses = [g for k, g in grads_tied.items() if _first(k, path) == key]
        torch.testing.assert_close(grad, torch.stack(uses).sum(0), atol=1e-5, rtol=1e-4)


def _grads(model: nnspec.compiler.ir.Model, params: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]
           ) -> dict[str, torch.Tensor]:
    """Each parameter's gradient of the sum of the float outputs (eval mode; an unused one counts as zero)."""
    interp = Interpreter(model, seed=None).eval()
    load_params(interp, params)
    loss = sum(v.sum() for v in interp(**inputs).values() if v.dtype.is_floating_point)
    if isinstance(loss, torch.Tensor) and loss.requires_grad:    # not when no output depends on a parameter
        loss.backward()
    return {k: p.grad if p.grad is not None else torch.zeros_like(p)
            for k, p in interp.named_spec_parameters().items()}


def _first(path: str, rep: str) -> str:
    head = f"{rep}."
    if not path.startswith(head):
        return path
    _, _, rest = path[len(head):].partition(".")
    return f"{head}0.{rest}"
