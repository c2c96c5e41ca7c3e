"""`groupnorm`: group normalisation over named axes, against torch's GroupNorm and the formula, in the reference
interpreter, the generated module (-O0/-O2, torch and triton targets) and under --dtype; its mistakes are located."""

from __future__ import annotations

import pytest
import torch

import nnspec
from nnspec.backends.torch import Interpreter
from nnspec.compiler.transforms import apply

CHANNELS_LAST = """\
nnspec: 1
name: gn_last
dims: {C: 8, G: 4}
inputs:
  x: float32[B, H, W, C]
outputs:
  y: float32[B, H, W, C]
body: |
  y = groupnorm(x, G, over=C, name=norm)
"""

VIDEO = """\
nnspec: 1
name: gn_video
dims: {C: 6, G: 3}
inputs:
  x: float32[B, C, T, H]
outputs:
  y: float32[B, C, T, H]
body: |
  y = groupnorm(x, G, over=C, batch=(B, T), eps=1e-3, name=norm)
"""


def by_formula(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """x is [N, C, L]: each (sample, group) normalised by its own mean and biased variance, then per channel."""
    n, c, length = x.shape
    g = x.reshape(n, groups, c // groups * length)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    y = ((g - mean) / torch.sqrt(var + eps)).reshape(n, c, length)
    return y * weight[None, :, None] + bias[None, :, None]


def randomised(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    return state


def test_channels_last_matches_torch_group_norm() -> None:
    result = nnspec.check(CHANNELS_LAST)
    reference = torch.nn.GroupNorm(4, 8)
    interp = Interpreter(result.model).eval()
    state = randomised(interp.root)
    reference.load_state_dict({"weight": state["norm.weight"], "bias": state["norm.bias"]})
    x = torch.randn(2, 3, 5, 8)
    want = reference(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(interp(x=x)["y"], want)
    for opt in (0, 2):
        model = nnspec.build(CHANNELS_LAST, opt=opt).eval()
        model.load_state_dict(state)
        torch.testing.assert_close(model(x=x), want)


def test_two_batch_axes_take_statistics_per_sample_and_time_step() -> None:
    result = nnspec.check(VIDEO)
    interp = Interpreter(result.model).eval()
    state = randomised(interp.root)
    x = torch.randn(2, 6, 4, 5)
    # samples are (B, T) pairs: move T next to B, statistics over (group of C, H)
    flat = x.permute(0, 2, 1, 3).reshape(8, 6, 5)
    want = by_formula(flat, 3, state["norm.weight"], state["norm.bias"], 1e-3).reshape(2, 4, 6, 5).permute(0, 2, 1, 3)
    torch.testing.assert_close(interp(x=x)["y"], want)
    model = nnspec.build(VIDEO, opt=2).eval()
    model.load_state_dict(state)
    torch.testing.assert_close(model(x=x), want)
    assert "F.group_norm(" in nnspec.generated.compile_spec(VIDEO, opt=2).source


def test_triton_target_runs_it_as_torch_code() -> None:
    lines: list[str] = []
    model = nnspec.build(VIDEO, target="triton", opt=2, explain=lines).eval()
    state = randomised(model)
    x = torch.randn(1, 6, 2, 3)
    flat = x.permute(0, 2, 1, 3).reshape(2, 6, 3)
    want = by_formula(flat, 3, state["norm.weight"], state["norm.bias"], 1e-3).reshape(1, 2, 6, 3).permute(0, 2, 1, 3)
    torch.testing.assert_close(model(x=x), want)


def test_cost_and_parameters() -> None:
    result = nnspec.check(CHANNELS_LAST)
    assert result.params == 16                       # weight and bias, one per channel
    b, h, w = (s for s in sorted(result.flops.free_symbols, key=str))
    assert result.flops.subs({b: 2, h: 3, w: 5}) == 8 * 2 * 3 * 5 * 8   # 8 FLOPs per element


def test_bf16_keeps_group_statistics_in_float32() -> None:
    result = nnspec.check(CHANNELS_LAST)
    low, _ = apply(result.model, dtype="bf16")
    norm = next(n for n in low.graph if n.op == "groupnorm")
    assert all(low.graph[i].type.dtype.value == "float32" for i in norm.inputs)


@pytest.mark.parametrize(("body", "where", "code", "message"), [
    ("y = groupnorm(x, 3, over=C)", (9, 7), "E014", "8 channels on axis C do not split into 3 groups"),
    ("y = groupnorm(x, 4, over=C, batch=(B, Q))", (9, 37), "E017", "no axis 'Q'"),
    ("y = groupnorm(x, 4, over=C, batch=C)", (9, 7), "E017", "cannot also be a batch axis"),
    ("y = groupnorm(x, 4, over=C, eps=0)", (9, 7), "E015", "eps must be positive"),
])
def test_mistakes_are_located(body: str, where: tuple[int, int], code: str, message: str) -> None:
    text = CHANNELS_LAST.replace("y = groupnorm(x, G, over=C, name=norm)", body)
    with pytest.raises(nnspec.SpecError) as err:
        nnspec.check(text)
    assert err.value.code == code and message in err.value.message
    assert (err.value.span.line, err.value.span.col) == where


def test_channels_first_without_a_batch_axis_asks_for_one() -> None:
    text = CHANNELS_LAST.replace("x: float32[B, H, W, C]", "x: float32[C, L]").replace(
        "y: float32[B, H, W, C]", "y: float32[C, L]")
    with pytest.raises(nnspec.SpecError) as err:
        nnspec.check(text)
    assert err.value.code == "E019" and "batch=(...)" in err.value.message
