"""Transforms: deliberate changes to a checked model, each with its own contract (they do not preserve what
the model computes, so they are not optimizer passes).

| transform | module | contract |
|---|---|---|
| `dtype="bf16"` | dtype.py | storage/compute in bf16 or fp16, float32 islands; outputs keep their dtype |
| `drop=["h.5.attn"]` | drop.py | equals the original with those residual branches zeroed; params/FLOPs shrink by them |
| `share=[("h", 4)]` | share.py | consecutive iterations share weights; gradients sum over uses |
| `slice_width=W` | slicegpt.py | SliceGPT; with W = full width and any rotation, the original outputs |
| `lora=["*.c_attn:8"]` | lora.py, randlora.py | outputs unchanged at init; only adapters trainable; `merge` |

Each transform is a function `(model, ...) -> Model` returning a new model (the input is not changed); it
appends a line to `Model.transforms` and marks what it made or changed with `node.meta["transform"]` (a
string, several joined by "; "); a template made for some uses of a block has `graph.meta["variant_of"]` and
`graph.meta["transform"]`. `apply` runs them in a fixed order (drop, share, slice, lora, dtype) and returns
the lines `--explain` prints. `convert_params` carries a parameter dict through the same transforms.
"""

from __future__ import annotations

from typing import Any

from nnspec.compiler.analysis import Analysis
from nnspec.compiler.cost import format_flops
from nnspec.compiler.ir import Model
from nnspec.compiler.transforms.drop import drop
from nnspec.compiler.transforms.dtype import parse_dtype, to_dtype
from nnspec.compiler.transforms.lora import LoraSpec, lora, merge, parse_lora, trainable_parameters
from nnspec.compiler.transforms.rewrite import TransformError, param_nodes
from nnspec.compiler.transforms.share import parse_share, share
from nnspec.compiler.transforms.slicegpt import slice_model, slice_params

__all__ = ["LoraSpec", "TransformError", "apply", "convert_params", "drop", "load_params",
           "lora", "merge", "share", "slice_model", "slice_params", "to_dtype", "trainable_parameters"]


def _share_specs(share_: Any) -> list[tuple[str, int]]:
    return [parse_share(s) if isinstance(s, str) else (s[0], int(s[1])) for s in share_]


def _steps(*, dtype: Any = None, drop_: Any = (), slice_width: int | None = None, lora_: Any = (),
           share_: Any = (), fp32_outputs: bool = True) -> list[tuple[str, Any]]:
    steps: list[tuple[str, Any]] = []
    if drop_:
        steps.append(("drop", list(drop_)))
    if share_:
        steps.append(("share", _share_specs(share_)))
    if slice_width is not None:
        steps.append(("slice", int(slice_width)))
    if lora_:
        steps.append(("lora", [parse_lora(s) for s in lora_]))
    if dtype is not None and parse_dtype(dtype).value != "float32":
        steps.append(("dtype", (parse_dtype(dtype), fp32_outputs)))
    return steps


def _run(model: Model, kind: str, arg: Any) -> Model:
    if kind == "drop":
        return drop(model, arg)
    if kind == "share":
        return share(model, arg)
    if kind == "slice":
        return slice_model(model, arg)
    if kind == "lora":
        return lora(model, arg)
    return to_dtype(model, arg[0], fp32_outputs=arg[1])


def apply(model: Model, *, dtype: str | None = None, drop: Any = (), slice_width: int | None = None,
          rotation: Any = None, lora: Any = (), share: Any = (), fp32_outputs: bool = True
          ) -> tuple[Model, list[str]]:
    """Apply the requested transforms (drop, share, slice, lora, dtype, in that order) to a checked model.

    dtype: "bf16" or "fp16"; drop: parameter paths of residual sub-layers ("h.5.attn"); slice_width: the new
    residual width; rotation: its [D, D] orthogonal matrix, checked here (weights are converted by
    `convert_params`); lora: "PATTERN:RANK[:alpha=A][:randlora]" strings or `LoraSpec`s; share:
    "REPEAT:GROUPS" strings or (path, groups) pairs; fp32_outputs: see `to_dtype`.
    Returns the new model and one line per transform: what it did and how parameters and FLOPs changed.
    """
    steps = _steps(dtype=dtype, drop_=drop, slice_width=slice_width, lora_=lora, share_=share,
                   fp32_outputs=fp32_outputs)
    if rotation is not None and slice_width is None:
        raise TransformError("a rotation is only used by --slice")
    lines: list[str] = []
    for kind, arg in steps:
        before = model
        model = _run(model, kind, arg)
        if kind == "slice" and rotation is not None:
            _check_rotation(before, rotation)
        lines.append(_explain(before, model))
    return model, lines


def convert_params(model: Model, params: dict[str, Any], *, dtype: str | None = None, drop: Any = (),
                   slice_width: int | None = None, rotation: Any = None, lora: Any = (), share: Any = (),
                   fp32_outputs: bool = True, seed: int = 0) -> dict[str, Any]:
    """The parameters of `apply(model, ...)`'s model from `model`'s `params` (a dict path -> tensor).

    Dropped branches' parameters go; a shared group starts from its first iteration's weights; slicing
    rotates with `rotation` (required); new adapter parameters are initialised as their spec says (seeded);
    every tensor is cast to its new dtype.
    """
    import torch

    steps = _steps(dtype=dtype, drop_=drop, slice_width=slice_width, lora_=lora, share_=share,
                   fp32_outputs=fp32_outputs)
    out = dict(params)
    for kind, arg in steps:
        new = _run(model, kind, arg)
        if kind == "share":
            out = _share_params(new, out, arg)
        elif kind == "slice":
            if rotation is None:
                raise TransformError("converting weights for --slice needs the rotation (see compute_rotation)")
            out = slice_params(model, out, rotation, arg)
        model = new
    gen = torch.Generator().manual_seed(seed)
    result = {}
    for path, node in param_nodes(model):
        t = node.attrs["type"]
        dtype_ = getattr(torch, t.dtype.value)   # a DType's value is torch's name for it
        if path in out:
            result[path] = out[path].detach().to(dtype_)
        else:
            result[path] = _init(node.attrs["init"], [int(model.dims.concrete(s)) for s in t.sizes], dtype_, gen)
    return result


def _init(init: tuple[Any, ...], shape: list[int], dtype: Any, gen: Any) -> Any:
    import torch
    if init[0] == "normal":
        return (torch.randn(shape, generator=gen, dtype=torch.float64) * init[1]).to(dtype)
    return (torch.ones if init[0] == "ones" else torch.zeros)(shape, dtype=dtype)


def _share_params(model: Model, params: dict[str, Any], specs: list[tuple[str, int]]) -> dict[str, Any]:
    """Group g of a shared repeat takes the weights of its first iteration, g * count/groups."""
    from nnspec.compiler.transforms.rewrite import instances
    counts = {}
    for prefix, g in instances(model):
        for node in g:
            if node.op == "repeat" and "groups" in node.attrs:
                counts[prefix + node.attrs["scope"]] = node.attrs["count"] // node.attrs["groups"]
    out = dict(params)
    for path, _ in param_nodes(model):
        for rep, per in counts.items():
            head = f"{rep}."
            if path.startswith(head):
                group, _, rest = path[len(head):].partition(".")
                out[path] = params[f"{head}{int(group) * per}.{rest}"]
    return out


def _check_rotation(model: Model, rotation: Any) -> None:
    import torch

    from nnspec.compiler.transforms.slicegpt import plan
    full = int(model.dims.concrete(plan(model).axis.size))
    q = torch.as_tensor(rotation, dtype=torch.float64)
    if tuple(q.shape) != (full, full) or not torch.allclose(q.T @ q, torch.eye(full, dtype=torch.float64), atol=1e-6):
        raise TransformError(f"--slice: the rotation must be an orthogonal {full} x {full} matrix")


def load_params(interp: Any, params: dict[str, Any]) -> None:
    """Copy `params` into an `Interpreter`'s parameters (every parameter must be given, and only those)."""
    import torch
    own = interp.named_spec_parameters()
    missing, extra = sorted(set(own) - set(params)), sorted(set(params) - set(own))
    if missing or extra:
        raise ValueError(f"parameters do not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
    with torch.no_grad():
        for path, p in own.items():
            p.copy_(params[path])


def _explain(before: Model, after: Model) -> str:
    a, b = Analysis(before), Analysis(after)
    pa, pb = a.total_params(), b.total_params()
    fa, fb = a.total_flops(), b.total_flops()
    trainable = len(trainable_parameters(after))
    line = f"{after.transforms[-1]}: params {pa:,} -> {pb:,} ({pb - pa:+,})"
    if fa != fb:
        line += f", FLOPs {format_flops(fa)} -> {format_flops(fb)}"
    if trainable != len(param_nodes(after)):
        frozen = sum(int(after.dims.concrete(n.attrs["type"].numel())) for _, n in param_nodes(after)
                     if not n.attrs.get("trainable", True))
        line += f", trainable {pb - frozen:,}"
    return line
