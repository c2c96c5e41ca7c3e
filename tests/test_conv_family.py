"""Grouped and depthwise convolution (`conv(..., groups=)`), transposed convolution (`conv_transpose`) and
resizing (`interpolate`) over named axes, 1-3 spatial axes: against torch.nn modules, F.* and hand-computed values,
in the reference interpreter and the generated module (-O0/-O2, torch and triton targets); sizes, parameters and
FLOPs by the formulas; mistakes are located."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nnspec
from nnspec.backends.torch import Interpreter


def spec(dims: str, x: str, y: str, body: str) -> str:
    return f"nnspec: 1\nname: t\ndims: {{{dims}}}\ninputs:\n  x: float32[{x}]\noutputs:\n  y: float32[{y}]\n" \
           f"body: |\n  {body}\n"


def randomised(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    return state


def everywhere(text: str, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """The output of the interpreter and of the generated module at -O0 and -O2 (all with the same random weights),
    and those weights by spec path."""
    interp = Interpreter(nnspec.check(text).model).eval()
    state = randomised(interp.root)
    outs = [interp(x=x)["y"]]
    for opt in (0, 2):
        model = nnspec.build(text, opt=opt).eval()
        model.load_state_dict(state)
        outs.append(model(x=x))
    return outs, state


SPATIAL = {1: ("L", "L: 7"), 2: ("H, W", "H: 6, W: 5"), 3: ("D, H, W", "D: 4, H: 5, W: 3")}


@pytest.mark.parametrize("n", [1, 2, 3])
def test_grouped_conv_matches_torch_conv_with_groups(n: int) -> None:
    axes, dims = SPATIAL[n]
    outs_axes = ", ".join(f"{a.strip()}_out" for a in axes.split(","))
    text = spec(f"C: 6, O: 4, {dims}", f"B, C, {axes}", f"B, O, {outs_axes}",
                f"y = conv(x, O, 3, padding=1, groups=2, channel=C, over=({axes}), name=c)")
    result = nnspec.check(text)
    assert result.params == 4 * (6 // 2) * 3 ** n + 4      # each output channel sees one group of 3 inputs
    x = torch.randn(2, 6, *(int(d.split(": ")[1]) for d in dims.split(", ")))
    outs, state = everywhere(text, x)
    conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[n](6, 4, 3, padding=1, groups=2)
    conv.load_state_dict({"weight": state["c.weight"], "bias": state["c.bias"]})
    for got in outs:
        torch.testing.assert_close(got, conv(x))
    assert f"nn.Conv{n}d(C, O, {(3,) * n}, stride={(1,) * n}, padding={(1,) * n}, groups=2)" in \
        nnspec.generated.compile_spec(text, opt=2).source


def test_depthwise_conv_with_a_channel_multiplier_channels_last() -> None:
    # PVT-v2's and MobileNet's depthwise conv: one group per channel, here 2 filters per channel (out = 2·C)
    text = spec("C: 4, M: 2 * C, H: 6, W: 5", "B, H, W, C", "B, H, W, M",
                "y = conv(x, M, 3, padding=1, groups=C, channel=C, over=(H, W), into=(H, W), name=dw)")
    result = nnspec.check(text)
    assert result.params == 8 * 1 * 3 * 3 + 8
    weight = next(n for n in result.model.graph if n.op == "param" and n.attrs["path"] == "dw.weight")
    assert weight.attrs["type"].names == ("M", "C/4", "kernel_H", "kernel_W")
    x = torch.randn(2, 6, 5, 4)
    outs, state = everywhere(text, x)
    # by hand: output channel o filters input channel o // 2 alone
    xc = F.pad(x.permute(0, 3, 1, 2), (1, 1, 1, 1))
    want = torch.zeros(2, 8, 6, 5)
    for o in range(8):
        for i in range(6):
            for j in range(5):
                want[:, o, i, j] = (xc[:, o // 2, i:i + 3, j:j + 3] * state["dw.weight"][o, 0]).sum((-1, -2))
    want = (want + state["dw.bias"][None, :, None, None]).permute(0, 2, 3, 1)
    for got in outs:
        torch.testing.assert_close(got, want)


def test_grouped_conv_flops_count_one_group_of_inputs() -> None:
    text = spec("C: 8, O: 8, L: 10", "B, C, L", "B, O, L_out", "y = conv(x, O, 3, groups=4, channel=C, over=L, "
                "bias=false)")
    b = next(iter(nnspec.check(text).flops.free_symbols))
    # 8 outputs x 8 positions, each 2 inputs x 3 taps multiply-adds
    assert nnspec.check(text).flops.subs(b, 1) == 2 * 8 * 8 * 2 * 3


@pytest.mark.parametrize(("n", "stride", "padding", "output_padding", "groups"), [
    (1, 2, 1, 1, 1), (2, 2, 1, 1, 2), (2, (2, 3), (0, 1), (1, 2), 1), (3, 2, 0, 0, 3)])
def test_conv_transpose_matches_torch_conv_transpose(n: int, stride: object, padding: object, output_padding: object,
                                                      groups: int) -> None:
    axes, dims = SPATIAL[n]
    names = [a.strip() for a in axes.split(",")]
    sizes = [int(d.split(": ")[1]) for d in dims.split(", ")]
    per_axis = [(v if isinstance(v, tuple) else (v,) * n) for v in (stride, padding, output_padding)]
    # the output size, from the formula in torch's ConvTranspose docs (dilation 1)
    outs = [(s - 1) * st - 2 * p + 3 + op for s, st, p, op in zip(sizes, *per_axis, strict=True)]
    text = spec(f"C: 6, O: 12, {dims}", f"B, C, {axes}", f"B, O, {', '.join(f'{a}_up' for a in names)}",
                f"y = conv_transpose(x, O, 3, stride={stride}, padding={padding}, output_padding={output_padding}, "
                f"groups={groups}, channel=C, over=({axes}), into=({', '.join(f'{a}_up' for a in names)}), name=up)")
    result = nnspec.check(text)
    assert result.params == 6 * (12 // groups) * 3 ** n + 12
    x = torch.randn(2, 6, *sizes)
    got, state = everywhere(text, x)
    module = {1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}[n](
        6, 12, 3, stride=stride, padding=padding, output_padding=output_padding, groups=groups)
    module.load_state_dict({"weight": state["up.weight"], "bias": state["up.bias"]})
    want = module(x)
    assert list(want.shape[2:]) == outs
    for y in got:
        torch.testing.assert_close(y, want)


def test_conv_transpose_by_hand_and_its_flops() -> None:
    # stride 2, kernel 2: each input element writes its own 2x1 patch; no overlap, so y[2i + a] = x[i]·w[a] + b
    text = spec("C: 1, L: 3", "B, C, L", "B, C, L2", "y = conv_transpose(x, C, 2, stride=2, channel=C, over=L, "
                "into=L2, name=up)")
    result = nnspec.check(text)
    interp = Interpreter(result.model).eval()
    with torch.no_grad():
        interp.root.load_state_dict({"up.weight": torch.tensor([[[10.0, 1.0]]]), "up.bias": torch.tensor([0.5])})
    y = interp(x=torch.tensor([[[1.0, 2.0, 3.0]]]))["y"]
    torch.testing.assert_close(y, torch.tensor([[[10.5, 1.5, 20.5, 2.5, 30.5, 3.5]]]))
    b = next(iter(result.flops.free_symbols))
    assert result.flops.subs(b, 1) == 2 * 3 * 1 * 2 + 6     # 3 inputs x 2 taps multiply-adds, a bias per output


def test_interpolate_by_hand() -> None:
    text = spec("L: 3", "B, L", "B, L2", 'y = interpolate(x, 5, over=L, into=L2, mode="linear", align_corners=true)')
    x = torch.tensor([[0.0, 1.0, 4.0]])
    # corners aligned: output i samples input position i·(3-1)/(5-1) = i/2
    torch.testing.assert_close(Interpreter(nnspec.check(text).model)(x=x)["y"],
                               torch.tensor([[0.0, 0.5, 1.0, 2.5, 4.0]]))
    text = spec("L: 3", "B, L", "B, L_out", "y = interpolate(x, scale=2, over=L)")
    torch.testing.assert_close(Interpreter(nnspec.check(text).model)(x=x)["y"],
                               torch.tensor([[0.0, 0.0, 1.0, 1.0, 4.0, 4.0]]))   # nearest: each element twice
    text = spec("L: 3", "B, L", "B, L_out", 'y = interpolate(x, scale=2, over=L, mode="linear")')
    # pixel centres: output i samples input position (i + 0.5)/2 - 0.5, clamped at 0 and at the last element
    torch.testing.assert_close(Interpreter(nnspec.check(text).model)(x=x)["y"],
                               torch.tensor([[0.0, 0.25, 0.75, 1.75, 3.25, 4.0]]))


@pytest.mark.parametrize("call", [
    'interpolate(x, (H2, W2), over=(H, W), mode="bilinear")',
    'interpolate(x, (H2, W2), over=(H, W), mode="bilinear", align_corners=true)',
    "interpolate(x, (H2, W2), over=(H, W))",
    "interpolate(x, scale=(1.5, 0.5), over=(H, W), into=(H2, W2))",
    'interpolate(x, scale=(1.5, 0.5), over=(H, W), into=(H2, W2), mode="bilinear")',
])
def test_interpolate_channels_last_matches_f_interpolate(call: str) -> None:
    text = spec("C: 3, H: 6, W: 4, H2: 9, W2: 2", "B, H, W, C", "B, H2, W2, C", f"y = {call}")
    x = torch.randn(2, 6, 4, 3)
    kw = {"mode": "bilinear" if "bilinear" in call else "nearest"}
    if "bilinear" in call:
        kw["align_corners"] = "align_corners=true" in call
    if "scale" in call:
        kw["scale_factor"] = (1.5, 0.5)
    else:
        kw["size"] = (9, 2)
    want = F.interpolate(x.permute(0, 3, 1, 2), **kw).permute(0, 2, 3, 1)
    outs, _ = everywhere(text, x)
    for got in outs:
        torch.testing.assert_close(got, want)


def test_interpolate_3d_trilinear_and_flops() -> None:
    text = spec("C: 2, D: 3, H: 4, W: 2", "B, C, D, H, W", "B, C, D_out, H_out, W_out",
                'y = interpolate(x, scale=2, over=(D, H, W), mode="trilinear")')
    x = torch.randn(1, 2, 3, 4, 2)
    outs, _ = everywhere(text, x)
    for got in outs:
        torch.testing.assert_close(got, F.interpolate(x, scale_factor=2, mode="trilinear"))
    b = next(iter(nnspec.check(text).flops.free_symbols))
    assert nnspec.check(text).flops.subs(b, 1) == 2 * 2 ** 3 * (2 * 6 * 8 * 4)   # a multiply-add per corner
    nearest = text.replace(', mode="trilinear"', "")
    assert nnspec.check(nearest).flops == 0


def test_interpolate_over_a_free_axis() -> None:
    text = spec("C: 2", "B, C, T", "B, C, T_out", 'y = interpolate(x, scale=2, over=T, mode="linear")')
    result = nnspec.check(text)
    t = next(s for s in result.flops.free_symbols if str(s) == "T")
    assert result.model.graph[result.model.outputs["y"]].type.axes[2].size == 2 * t
    x = torch.randn(1, 2, 5)
    outs, _ = everywhere(text, x)
    for got in outs:
        torch.testing.assert_close(got, F.interpolate(x, scale_factor=2, mode="linear"))


def test_triton_target_runs_them_as_torch_code() -> None:
    text = spec("C: 4, H: 4, W: 4", "B, C, H, W", "B, C, H2, W2",
                "h = conv(x, C, 3, padding=1, groups=C, channel=C, over=(H, W), name=dw)\n"
                "  h = conv_transpose(h, C, 2, stride=2, groups=2, channel=C, over=(H_out, W_out), name=up)\n"
                '  y = interpolate(h, (H, W), over=(H_out_out, W_out_out), into=(H2, W2), mode="bilinear")')
    interp = Interpreter(nnspec.check(text).model).eval()
    state = randomised(interp.root)
    model = nnspec.build(text, target="triton", opt=2).eval()
    model.load_state_dict(state)
    x = torch.randn(1, 4, 4, 4)
    want = F.interpolate(F.conv_transpose2d(F.conv2d(x, state["dw.weight"], state["dw.bias"], padding=1, groups=4),
                                            state["up.weight"], state["up.bias"], stride=2, groups=2),
                         size=(4, 4), mode="bilinear")
    torch.testing.assert_close(model(x=x), want)
    torch.testing.assert_close(interp(x=x)["y"], want)


BASE = spec("C: 6, O: 4, H: 6, W: 5", "B, C, H, W", "B, O, H, W", "y = BODY")


@pytest.mark.parametrize(("body", "at", "code", "message"), [
    ("conv(x, O, 3, padding=1, groups=4, channel=C, over=(H, W))", "4, channel", "E014",
     "6 channels on axis C do not split into 4 groups"),
    ("conv(x, 5, 3, padding=1, groups=3, channel=C, over=(H, W))", "3, channel", "E014",
     "5 channels on axis 5 do not split into 3 groups"),
    ("conv(x, O, 3, groups=0, channel=C, over=(H, W))", "0, channel", "E015", "groups must be >= 1"),
    ("conv_transpose(x, O, 3, stride=2, output_padding=2, channel=C, over=(H, W))", "2, channel", "E015",
     "output_padding (2, 2) must be >= 0 and smaller than the stride (2, 2)"),
    ("conv_transpose(x, O, 1, padding=3, channel=C, over=(H, W))", "conv_", "E023", "padding 3 crops all"),
    ("interpolate(x, (H, W), scale=2, over=(H, W))", "interp", "E019", "either size=(...) or scale=..."),
    ('interpolate(x, H, over=H, mode="bilinear")', "interp", "E019", "works over 2 axes, got 1; use mode=\"linear\""),
    ('interpolate(x, (H, W), over=(H, W), mode="cubic")', "interp", "E015", "interpolate mode must be one of"),
    ("interpolate(x, (H, W), over=(H, W), align_corners=true)", "interp", "E015", "not nearest"),
    ("interpolate(x, scale=0.1, over=(H, W))", "interp", "E012", "scaled by 0.1 leaves no element"),
])
def test_mistakes_are_located(body: str, at: str, code: str, message: str) -> None:
    with pytest.raises(nnspec.SpecError) as err:
        nnspec.check(BASE.replace("BODY", body))
    assert err.value.code == code and message in err.value.message
    assert (err.value.span.line, err.value.span.col) == (9, len("  y = ") + body.index(at) + 1)


def test_a_scale_that_rounds_is_refused_on_a_free_axis() -> None:
    text = spec("C: 2", "B, C, T", "B, C, T_out", "y = interpolate(x, scale=0.3, over=T)")
    with pytest.raises(nnspec.SpecError) as err:
        nnspec.check(text)
    assert err.value.code == "E015" and "give size=(...) instead" in err.value.message
    assert (err.value.span.line, err.value.span.col) == (9, len("  y = interpolate(x, scale=") + 1)
    # on an axis of known size the double-precision product is what torch computes: floor(7·0.3) = 2
    known = spec("C: 2, L: 7", "B, C, L", "B, C, L_out", "y = interpolate(x, scale=0.3, over=L)")
    x = torch.randn(1, 2, 7)
    torch.testing.assert_close(Interpreter(nnspec.check(known).model)(x=x)["y"], F.interpolate(x, scale_factor=0.3))
