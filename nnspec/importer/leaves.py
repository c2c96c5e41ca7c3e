"""Leaf modules (no submodules) as the language's functions, each recognition checked on the captured values.

A leaf's region is every node computed inside it; its input is the one non-parameter value flowing in. What it
computes is recognised from the module (its parameters, its `eps`) and then recomputed from the captured input
with the language's definition and compared with what the model computed: a module that looks like an RMSNorm
but adds one to its weight (Gemma) fails the comparison and is refused rather than silently mis-lifted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import fx, nn

from nnspec.importer.errors import ImportFailure
from nnspec.importer.graph import L
from nnspec.importer.tied import count_name, head_axis

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter

_ACTIVATIONS = {
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "silu": F.silu,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}


def _region(lifter: Lifter, path: str, call: fx.Node | None = None) -> list[fx.Node]:
    """The nodes computed inside module `path`; with `call`, only those of the same call of it as `call`."""
    key = lifter.calls(call).get(path) if call is not None else None
    return [n for n in lifter.graph.nodes if path in lifter.stack(n) and (key is None or lifter.calls(n)[path] == key)]


def _inputs(lifter: Lifter, region: list[fx.Node]) -> list[fx.Node]:
    inside = set(region)
    seen: list[fx.Node] = []
    for n in region:
        for a in n.all_input_nodes:
            r = lifter.resolve(a)
            if a in inside or r in inside or not isinstance(r, fx.Node):
                continue
            if r.op == "placeholder" and (r.name in lifter.params or r.name in lifter.buffers):
                continue
            if r not in seen:
                seen.append(r)
    return seen


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-4, rtol=1e-4)


def lift_leaf(lifter: Lifter, path: str, n: fx.Node) -> L:
    mod = lifter.modules[path]
    region = _region(lifter, path, n)       # this call's nodes (`rules.lift_leaf` sends later calls to reuse.py)
    ins = _inputs(lifter, region)
    if len(ins) != 1:
        raise lifter.fail(n, f"module {type(mod).__name__} takes {len(ins)} tensors; only one-input leaf modules "
                             "are lifted")
    x_node = ins[0]
    x = lifter.lift(x_node)
    if not isinstance(x, L):
        from nnspec.importer.relative_bias import lift_relative_bias

        got = lift_relative_bias(lifter, path, n, mod, x) if isinstance(mod, nn.Embedding) else None
        if got is None:
            raise lifter.fail(x_node, f"a constant table fed to {type(mod).__name__} that is not arange")
        _check(lifter, n, F.embedding(lifter.value(x_node), mod.weight), lifter.value(n))
        return got
    xv = lifter.value(x_node)
    yv = lifter.value(n)
    parent_scope = lifter.scope_of(n)
    name = path.rsplit(".", 1)[-1]
    cls = type(mod).__name__
    params = dict(mod.named_parameters(recurse=False))
    idx = lifter.index[n]

    def call(fmt: str, axes: list[tuple[str, ...]], order: list[str], kind: str) -> L:
        lifter.leaf_calls.append((path, kind))
        return L(fmt, [x], axes, order, parent_scope, idx, hint=name)

    if isinstance(mod, nn.Embedding) or (cls == "Embedding" and "weight" in params):
        num, dim = mod.weight.shape
        _check(lifter, n, F.embedding(xv, mod.weight), yv)
        out = lifter.dims.axis(dim)
        extra = f", padding_idx={mod.padding_idx}" if getattr(mod, "padding_idx", None) is not None else ""
        count = count_name(lifter, path, num, dim, x.fmt.startswith("arange("))   # what it counts (`tied.py`)
        return call(f"embedding({{0}}, {count}, {lifter.dims.expr(dim)}{extra}, name={name})",
                    x.axes + [(out,)], x.order + [out], "embedding")
    if "weight" in params and mod.weight.dim() == 2 and (isinstance(mod, nn.Linear) or cls == "Conv1D"):
        w = mod.weight if isinstance(mod, nn.Linear) else mod.weight.t()
        tied = next((p for p, m in lifter.modules.items() if isinstance(m, nn.Embedding) and m.weight is mod.weight
                     and p != path), None)
        if tied is not None and params.get("bias") is None:
            # a head tied to the embedding: the language writes it as a contraction with the embedding's weight
            _check(lifter, n, F.linear(xv, w), yv)
            x = _merge_last(lifter, x, n)
            out = head_axis(lifter, tied, w.shape[0])
            if (out,) == x.axes[-1]:
                raise lifter.fail(n, f"a tied head whose vocabulary and features are both named {out} (equal sizes), "
                                     "which the contraction with the embedding's weight cannot tell apart")
            axes = x.axes[:-1] + [(out,)]
            node = L(f"{{0}} * {tied.rsplit('.', 1)[-1]}.weight", [x], axes, [a for g in axes for a in g],
                     parent_scope, idx, atom=False, hint=name, bind=True)
            node.annot = ", ".join(a for g in axes for a in g)
            return node
        _check(lifter, n, F.linear(xv, w, params.get("bias")), yv)
        if cls == "Conv1D":
            lifter.transposed.add(path)
        out_size = w.shape[0]
        out = lifter.dims.axis(out_size)
        bias = "" if params.get("bias") is not None else ", bias=false"
        x = _merge_last(lifter, x, n)
        if out_size == 1:
            # one output (a gate's logit): torch keeps a size-1 dim that broadcasts by position; the language
            # sums the axis `1` away so that the value broadcasts by name
            return call(f"sum(linear({{0}}, 1{bias}, name={name}), over=1)", x.axes[:-1] + [()],
                        [a for a in x.order if a != x.axes[-1][0]], "linear")
        return call(f"linear({{0}}, {lifter.dims.expr(out_size)}{bias}, name={name})", x.axes[:-1] + [(out,)],
                    [a for a in x.order if a != x.axes[-1][0]] + [out], "linear")
    if isinstance(mod, nn.Conv2d):
        return _conv2d(lifter, mod, n, x, xv, yv, name, call)
    if isinstance(mod, nn.Conv1d):
        from nnspec.importer.conv1d import lift_conv1d

        return lift_conv1d(lifter, mod, n, x, xv, yv, name, call)
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        from nnspec.importer.batchnorm import lift_batchnorm

        return lift_batchnorm(lifter, mod, n, x, xv, yv, name, call)
    if isinstance(mod, nn.LayerNorm) or (cls.endswith("LayerNorm") and not cls.endswith("RMSNorm") \
            and "bias" in params):
        eps = float(getattr(mod, "eps", getattr(mod, "variance_epsilon", 1e-5)))
        ref = F.layer_norm(xv.float(), xv.shape[-1:], params.get("weight"), params.get("bias"), eps)
        _check(lifter, n, ref, yv)
        x = _merge_last(lifter, x, n)
        return call(f"layernorm({{0}}, eps={_num(eps)}, name={name})", x.axes, x.order, "layernorm")
    if "RMSNorm" in cls or (set(params) == {"weight"} and params["weight"].dim() == 1):
        eps = float(getattr(mod, "variance_epsilon", getattr(mod, "eps", 1e-6)))
        xf = xv.float()
        ref = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * params["weight"]
        _check(lifter, n, ref, yv)
        x = _merge_last(lifter, x, n)
        return call(f"rmsnorm({{0}}, eps={_num(eps)}, name={name})", x.axes, x.order, "rmsnorm")
    if not params:
        if isinstance(yv, torch.Tensor) and isinstance(xv, torch.Tensor) and _close(xv, yv):
            return x                                 # dropout in eval mode, identity
        for fn_name, fn in _ACTIVATIONS.items():
            if isinstance(xv, torch.Tensor) and xv.is_floating_point() and _close(fn(xv), yv):
                return L(f"{fn_name}({{0}})", [x], x.axes, x.order, parent_scope, idx, hint=x.hint)
    raise lifter.fail(n, f"module {cls} is not a function nnspec recognises (linear, embedding, layernorm, "
                         "rmsnorm, an activation) or computes something else than it")


def _conv2d(lifter: Lifter, mod: nn.Conv2d, n: fx.Node, x: L, xv: torch.Tensor, yv: torch.Tensor, name: str,
            call) -> L:
    """`conv(x, out, kernel, stride=, padding=, channel=C, over=(H, W), into=(gh, gw))` for a 2-d convolution over
    the last two axes (NCHW)."""
    _check(lifter, n, mod(xv), yv)
    k, st, pad = mod.kernel_size, mod.stride, mod.padding
    if k[0] != k[1] or st[0] != st[1] or not isinstance(pad, tuple) or pad[0] != pad[1] \
            or mod.dilation != (1, 1) or any(len(a) != 1 for a in x.axes[1:]):
        raise lifter.fail(n, "a convolution other than a square, undilated one over named axes")
    from nnspec.importer.windows import grid_names

    d = lifter.dims
    extra = f", padding={pad[0]}" if pad[0] else ""
    extra += f", groups={d.expr(mod.groups)}" if mod.groups != 1 else ""     # depthwise: groups=C
    bias = "" if mod.bias is not None else ", bias=false"
    c, h, w = (a[0] for a in x.axes[1:])
    gh, gw = grid_names(lifter, (h, w), tuple(xv.shape[-2:]), tuple(yv.shape[-2:]), x, n)
    q = [a if a.isidentifier() or a.isdigit() else f'"{a}"' for a in (c, h, w, gh, gw)]   # `channel="2*d"`
    fmt = (f"conv({{0}}, {d.expr(mod.out_channels)}, kernel={d.expr(k[0])}, stride={d.expr(st[0])}{extra}{bias}, "
           f"channel={q[0]}, over=({q[1]}, {q[2]}), into=({q[3]}, {q[4]}), name={name})")
    out = d.axis(mod.out_channels)
    order = [{c: out, h: gh, w: gw}.get(a, a) for a in x.order]     # the language's conv keeps axis positions
    return call(fmt, [x.axes[0], (out,), (gh,), (gw,)], order,
                "conv")


def _merge_last(lifter: Lifter, x: L, n: fx.Node) -> L:
    """A function over the last axis needs one named axis there: merge a group (`o[B, T, (h d)]`), and the spec
    value's last axis must be torch's (`(mean(h, over=T) + h)` is `[B, d, T]` in the language, whose axes come in
    operand order): rearranged to torch's order where they differ."""
    from nnspec.importer.graph import annotation
    from nnspec.importer.ops import _bound, merge_groups

    if not x.axes:
        return x
    if len(x.axes[-1]) == 0:
        raise lifter.fail(n, "a size-1 last axis where a function needs features")
    if len(x.axes[-1]) > 1:
        x = merge_groups(lifter, x, [len(x.axes) - 1], n)
    if x.order and x.order[-1] != x.axes[-1][0]:
        flat = x.flat()
        if sorted(flat) != sorted(x.order):
            raise lifter.fail(n, f"axes {x.order} of a value in another order than torch's {flat}")
        from nnspec.importer.windows import plain_names

        x = plain_names(lifter, x, n)           # a `2*d` axis cannot be listed in a rearrange: named `F` first
        flat = x.flat()
        x = L("{0}" + annotation(list(flat)), [_bound(x)], x.axes, flat, x.scope, x.idx + 0.01, hint=x.hint)
    return x


def _check(lifter: Lifter, n: fx.Node, ref: torch.Tensor, got: torch.Tensor) -> None:
    if not isinstance(got, torch.Tensor) or not _close(ref, got):
        stack = lifter.stack(n)
        raise ImportFailure("the module's output differs from the recognised function's", op=str(n.target),
                            module=stack[-1] if stack else "")


def _num(v: float) -> str:
    return repr(float(v)) if "e" not in repr(float(v)) else f"{v:.1e}".replace("e-0", "e-")
