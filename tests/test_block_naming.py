"""Names a block makes up never reach its caller, and one annotation may merge groups of equal size (issue 15,
section 2: a block called at several sizes, resolutions and scopes must work).

- An axis an op creates inside a block (`conv(..., into=(P, Q))`) comes back named by its size, as a name an
  annotation makes up does; two such axes of one size are numbered (`4`, `4_1`) as `param(d, d)` numbers its
  second axis, so `down(down(x))` does not meet the first call's `Q` in the second.
- A merged axis is named after its size when its factors are numbers; two merged groups of one size in one
  annotation are numbered the same way instead of being refused as two axes of one name.

Expected shapes and names are worked out by hand from the conv size rule (floor((n - k) / s) + 1) and the naming
rules in docs/language.md; outputs are compared with plain PyTorch on the same weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import nnspec
from nnspec.backends.torch import Interpreter
from nnspec.compiler.ir import Axis

DOWN = """\
nnspec: 1
name: leak
dims: {c: 4, h: 8, w: 8, h4: 2, w4: 2}
inputs:
  x: float32[B, c, h, w]
outputs:
  y: float32[B, c, h4, w4]
blocks:
  down(x[B, C, H, W]): |
    return conv(x, C, kernel=2, stride=2, channel=C, over=(H, W), into=(P, Q))
body: |
  y = down(down(x, name=a), name=b)
"""

WINDOWS = """\
nnspec: 1
name: merge_min
dims: {image: 16, image_w: image, p: 2, ws: 2, c: 3, h: image / p, w: h}
inputs:
  x: float32[B, c, image, image_w]
outputs:
  y: float32[B, h, w, c]
blocks:
  windows(x[B, H, W, C], win): |
    t = x[B, (nh win), W, C][B, nh, wh, W, C][B, nh, wh, (nw win), C][B, nh, wh, nw, win, C]
    return t[B, (nh wh), (nw win), C]
body: |
  e = conv(x, c, kernel=p, stride=p, channel=c, over=(image, image_w), into=(h, w))[B, h, w, c]
  y = windows(e, ws)
"""


def _out_axes(result: nnspec.CheckResult) -> tuple[Axis, ...]:
    model = result.model
    return model.graph[model.outputs["y"]].type.axes


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return {k.removeprefix("root."): v for k, v in model.state_dict().items()}


def _both(text: str, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The interpreter's output and weights, after checking the generated module gives the same output."""
    model = Interpreter(nnspec.check(text).model).eval()
    w = _weights(model)
    generated = nnspec.build(text, opt=0)
    generated.load_state_dict(w)
    with torch.no_grad():
        out = model(x=x)["y"]
        again = generated(x=x)
    torch.testing.assert_close(again["y"] if isinstance(again, dict) else again, out)
    return out, w


def test_conv_into_names_do_not_leak_from_a_block_called_twice() -> None:
    result = nnspec.check(DOWN)
    # 8 -> floor((8 - 2) / 2) + 1 = 4 -> 2; the square map's two made-up axes are named by size, then numbered
    assert [(a.name, str(a.size)) for a in _out_axes(result)[1:]] == [("c", "c"), ("2", "2"), ("2_1", "2")]
    assert result.params == 2 * (4 * 4 * 2 * 2 + 4)
    x = torch.randn(2, 4, 8, 8)
    out, w = _both(DOWN, x)
    a = F.conv2d(x, w["a.conv.weight"], w["a.conv.bias"], stride=2)
    torch.testing.assert_close(out, F.conv2d(a, w["b.conv.weight"], w["b.conv.bias"], stride=2))


def test_conv_into_names_at_two_resolutions_from_one_scope() -> None:
    text = DOWN.replace("dims: {c: 4, h: 8, w: 8, h4: 2, w4: 2}", "dims: {c: 4}") \
        .replace("x: float32[B, c, h, w]", "x: float32[B, c, H, W]") \
        .replace("y: float32[B, c, h4, w4]", "y: float32[B, c, Y, X]") \
        .replace("y = down(down(x, name=a), name=b)", "y = down(down(down(x, name=a), name=b), name=c)")
    # 16 -> 8 -> 4 -> 2 and 8 -> 4 -> 2 -> 1; 12 -> 6 -> 3 -> 1 on both axes
    for x, shape in ((torch.randn(1, 4, 16, 8), (1, 4, 2, 1)), (torch.randn(2, 4, 12, 12), (2, 4, 1, 1))):
        out, w = _both(text, x)
        assert out.shape == shape
        want = x
        for scope in "abc":
            want = F.conv2d(want, w[f"{scope}.conv.weight"], w[f"{scope}.conv.bias"], stride=2)
        torch.testing.assert_close(out, want)


def test_annotation_names_of_one_size_in_a_block_called_at_two_sizes() -> None:
    # `square` makes up P and Q for two axes of one size: 16 = 4 * 4 comes back as [B, 4, 4_1] and 9 = 3 * 3 as
    # [B, 3, 3_1]; had Q reached the caller, the second call would clash with the first (Q = 4, then Q = 3)
    text = """\
nnspec: 1
name: squares
dims: {k: 4, k2: k, j: 3, j2: j}
inputs:
  x: float32[B, 16]
  z: float32[B, 9]
outputs:
  u: float32[B, k, k2]
  v: float32[B, j, j2]
blocks:
  square(x[B, N], s): |
    return x[B, (P s)][B, P, Q]
body: |
  u = square(x, 4)
  v = square(z, 3)
"""
    model = nnspec.check(text).model
    assert [a.name for a in model.graph[model.outputs["u"]].type.axes] == ["B", "4", "4_1"]
    assert [a.name for a in model.graph[model.outputs["v"]].type.axes] == ["B", "3", "3_1"]
    x, z = torch.randn(2, 16), torch.randn(2, 9)
    out = nnspec.build(text, opt=0)(x=x, z=z)
    torch.testing.assert_close(out["u"], x.reshape(2, 4, 4))
    torch.testing.assert_close(out["v"], z.reshape(2, 3, 3))


def test_merged_groups_of_equal_size_get_distinct_names() -> None:
    result = nnspec.check(WINDOWS)
    # conv: 16 -> 8 = h = w; windows of 2: (nh wh) = 4*2 = 8 and (nw win) = 4*2 = 8, numbered `8`, `8_1`
    assert [(a.name, str(a.size)) for a in _out_axes(result)[1:]] == [("8", "8"), ("8_1", "8"), ("c", "c")]
    x = torch.randn(2, 3, 16, 16)
    out, w = _both(WINDOWS, x)
    e = F.conv2d(x, w["conv.weight"], w["conv.bias"], stride=2).permute(0, 2, 3, 1)   # [B, 8, 8, c]
    # split H as (nh win), then W as (nw win), and merge (nh wh) and (nw win) back: the same layout as e
    b = e.shape[0]
    t = e.reshape(b, 4, 2, 8, 3).reshape(b, 4, 2, 4, 2, 3)
    torch.testing.assert_close(out, t.reshape(b, 8, 8, 3))


def test_merge_naming_of_unequal_or_symbolic_groups_is_unchanged() -> None:
    text = """\
nnspec: 1
name: heads
dims: {n_head: 2, head_dim: 4, d: 8}
inputs:
  x: float32[B, n_head, head_dim, 3, 5]
outputs:
  y: float32[B, d, 15]
body: |
  y = x[B, (n_head head_dim), (3 5)]
"""
    result = nnspec.check(text)
    assert [a.name for a in _out_axes(result)] == ["B", "n_head*head_dim", "15"]
