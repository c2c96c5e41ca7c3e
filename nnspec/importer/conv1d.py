"""Zero padding and 1-d convolutions: Mamba's causal depthwise convolution written as the language spells it.

A causal convolution pads the sequence with `kernel - 1` zeros in front and convolves without padding, so each
position sees itself and the `kernel - 1` before it. nnspec's generated code writes the padding as
`torch.cat([torch.full((B, P, C), 0.0), u], dim=1)`, which is the language's
`concat(zeros(B, P, C), u, over=(P, T), into=Tp)`: a constant all-zero table joined to one lifted value along
one axis (the zero table's other axes named as the value's, so the two line up by name as torch lines them up by
position). The joined axis is new (`Tp`); its origin (T plus P entries) is remembered so that an `nn.Conv1d` over it
can name its output axis: with stride 1, no dilation, and P plus both sides' padding equal to `kernel - 1`, the
output is as long as the unpadded sequence, so it is that axis again (`into=T`), which is what lets the result
meet the rest of the sequence by name; so is a "same" convolution's (padding `(kernel - 1) / 2` on each side). Any
other 1-d convolution gets a new output axis.

`nn.Conv1d` (any groups, a depthwise one included) is `conv(x, out, kernel, stride=, padding=, groups=,
channel=C, over=L, into=L2)` over torch's last dim, checked by running the module on the captured input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from nnspec.importer.graph import L, annotation

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter


def padded_axes(lifter: Lifter) -> dict[tuple[str, str], tuple[str, int]]:
    """(block scope, joined axis) -> (the value's own axis, how many zeros were added to it)."""
    got = getattr(lifter, "padded_axes", None)
    if got is None:
        got = lifter.padded_axes = {}
    return got


def _free_like(lifter: Lifter, new: str, old: str) -> None:
    """Mark `new` as sized after a free dim when `old` is (a slice of it is refused: `slices.free_sized`)."""
    from nnspec.importer.slices import free_sized

    if free_sized(lifter, old):
        lifter.free_like = getattr(lifter, "free_like", set()) | {new}


def lift_cat(lifter: Lifter, n: fx.Node) -> L:
    """`cat([zeros, u], d)` (or `[u, zeros]`) as `concat(zeros(...), u, over=(P, T), into=Tp)`; any other
    concatenation goes to the generic rule."""
    from nnspec.importer.indexing import _zeros
    from nnspec.importer.ops import _bound, _cat, _dim, _scope_idx
    from nnspec.importer.slices import local_axis

    parts = list(n.args[0])
    zeros = [_zeros(lifter, p) for p in parts]
    if len(parts) != 2 or sum(z is not None for z in zeros) != 1:
        return _cat(lifter, n)
    j = 0 if zeros[1] is not None else 1            # the lifted value's position
    u, z = lifter.lift(parts[j]), zeros[1 - j]
    if not isinstance(u, L):
        raise lifter.fail(n, "a concatenation of a zero table and a constant")
    d = _dim(u, n.args[1] if len(n.args) > 1 else 0)
    pad = lifter.value(parts[1 - j]).shape[d]
    if len(u.axes[d]) != 1 or len(z.axes) != len(u.axes) or any(
            z.axes[i] != u.axes[i] for i in range(len(u.axes)) if i != d):
        raise lifter.fail(n, "a zero padding whose other axes are not the padded value's, one named axis each")
    ax = u.axes[d][0]
    # the padding's length is static, never the batch or length even when the trace's sizes equal it; a length no
    # dim has (HF configs give `conv_kernel`, not its padding) is a derived dim
    dims = lifter.dims
    pax = next((k for k in dims.ordered() if dims.values[k] == pad and "layer" not in k), None) or _pad_dim(lifter, pad)
    dims.used.add(pax)
    z = _named_zeros(lifter, z, d, pax)
    if pax == ax or pax in u.flat():
        raise lifter.fail(n, f"a zero padding whose length has the padded axis's name ({ax})")
    into = local_axis(lifter, f"{ax}p", u.flat() + z.flat(), lifter.value(n).shape[d])
    padded_axes(lifter)[(lifter.scope_of(n), into)] = (ax, pad)
    _free_like(lifter, into, ax)
    scope, idx = _scope_idx(lifter, n)
    if len(u.order) == len(u.axes) and u.order != u.flat():
        # the language joins along names, but keeps the first operand's order: make the value's order torch's
        u = L("{0}" + annotation(list(u.flat())), [_bound(u)], u.axes, u.flat(), u.scope, u.idx + 0.01, hint=u.hint)
    z.scope, z.idx = scope, idx - 0.5
    ops = [z, u] if j == 1 else [u, z]
    over = f"({pax}, {ax})" if j == 1 else f"({ax}, {pax})"
    axes = [(into,) if i == d else g for i, g in enumerate(u.axes)]
    order = [into if a == ax else a for a in u.order]
    return L(f"concat({{0}}, {{1}}, over={over}, into={into})", ops, axes, order, scope, idx, hint="padded",
             bind=True)


def _pad_dim(lifter: Lifter, size: int) -> str:
    """A dim for a padding length: `pad = K - 1` after a dim K one longer (a kernel), else `pad = size`."""
    d = lifter.dims
    name, j = "pad", 2
    while name in d.values or name in d.free.values():
        if d.values.get(name) == size:
            return name
        name, j = f"pad{j}", j + 1
    longer = next((k for k in d.ordered() if d.values[k] == size + 1 and "layer" not in k), None)
    d.values[name] = size
    d.used.add(name)
    if longer is not None:
        d.derived[name] = f"{longer} - 1"
        d.used.add(longer)
    return name


def _named_zeros(lifter: Lifter, z: L, d: int, name: str) -> L:
    axes = [(name,) if i == d else g for i, g in enumerate(z.axes)]
    names = [g[0] for g in axes if g]
    return L(f"zeros({', '.join(names)})", [], axes, names, z.scope, z.idx, hint="zeros")


def lift_conv1d(lifter: Lifter, mod: nn.Conv1d, n: fx.Node, x: L, xv: torch.Tensor, yv: torch.Tensor, name: str,
                call: Any) -> L:
    """`conv(x, out, kernel, ..., channel=C, over=L, into=L2)` for an `nn.Conv1d` over torch's [N, C, L]."""
    from nnspec.importer.slices import local_axis, size_expr

    with torch.no_grad():
        ref = mod(xv)
    if not isinstance(yv, torch.Tensor) or ref.shape != yv.shape or not torch.allclose(ref, yv, atol=1e-4, rtol=1e-4):
        raise lifter.fail(n, "the module's output differs from the recognised function's")
    (k,), (st,), (dil,) = mod.kernel_size, mod.stride, mod.dilation
    pad = mod.padding
    if isinstance(pad, str) or len(x.axes) != 3 or any(len(a) != 1 for a in x.axes) \
            or mod.padding_mode != "zeros":
        raise lifter.fail(n, "a 1-d convolution other than a zero-padded one over [batch, channel, length] named "
                             "axes")
    (p,) = pad
    c, over = x.axes[1][0], x.axes[2][0]
    src = padded_axes(lifter).get((lifter.scope_of(n), over))
    if st == 1 and dil == 1 and src is not None and src[1] + 2 * p == k - 1:
        into = src[0]                          # causal (or centred): as long as the unpadded sequence
    elif st == 1 and dil == 1 and 2 * p == k - 1:
        into = over                            # centred ("same") padding: the axis keeps its length
    else:
        into = local_axis(lifter, f"{over}c", x.flat(), yv.shape[-1])
        _free_like(lifter, into, over)
    extra = "".join(f", {key}={size_expr(lifter, v)}" for key, v, default in (
        ("stride", st, 1), ("padding", p, 0), ("groups", mod.groups, 1)) if v != default)
    if dil != 1:
        raise lifter.fail(n, "a dilated 1-d convolution")
    bias = "" if mod.bias is not None else ", bias=false"
    out = size_expr(lifter, mod.out_channels).replace(" ", "")
    fmt = (f"conv({{0}}, {size_expr(lifter, mod.out_channels)}, {size_expr(lifter, k)}{extra}{bias}, channel={c}, "
           f"over={over}, into={into}, name={name})")
    order = [a for a in x.order if a not in (c, over)] + [out, into]
    return call(fmt, [x.axes[0], (out,), (into,)], order, "conv")


HANDLERS = {"aten.cat.default": lift_cat}
