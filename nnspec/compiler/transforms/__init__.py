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
the lines `--explain` prints.

Parameters follow the model through the same transforms in the torch backend
(`nnspec.backends.torch.transform_params`: `convert_params`, `load_params`, `merge`, `slice_params`), which
applies what the compiler describes as plain data (`run_steps`, params.py, `slicegpt.plan`, `lora.plan_merge`),
so nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from nnspec.compiler.analysis import Analysis
from nnspec.compiler.cost import format_flops
from nnspec.compiler.ir import Model
from nnspec.compiler.transforms.drop import drop
from nnspec.compiler.transforms.dtype import parse_dtype, to_dtype
from nnspec.compiler.transforms.lora import LoraSpec, lora, parse_lora, trainable_parameters
from nnspec.compiler.transforms.rewrite import TransformError, param_nodes
from nnspec.compiler.transforms.rotation import check_rotation
from nnspec.compiler.transforms.share import parse_share, share
from nnspec.compiler.transforms.slicegpt import slice_model

__all__ = ["LoraSpec", "Step", "TransformError", "apply", "drop", "lora", "run_steps", "share", "slice_model",
           "to_dtype", "trainable_parameters"]


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


@dataclass(frozen=True)
class Step:
    """One transform as `apply` runs it: its kind ("drop", "share", "slice", "lora" or "dtype"), its parsed
    argument (e.g. the width of "slice", the (path, groups) pairs of "share"), and the model before and after."""

    kind: str
    arg: Any
    before: Model
    after: Model


def run_steps(model: Model, *, dtype: str | None = None, drop: Any = (), slice_width: int | None = None,
              lora: Any = (), share: Any = (), fp32_outputs: bool = True) -> Iterator[Step]:
    """The requested transforms in `apply`'s order, each run when the iteration reaches it (so a caller's check
    between steps comes before a later step's error, as in `apply`). The flags are parsed at once."""
    steps = _steps(dtype=dtype, drop_=drop, slice_width=slice_width, lora_=lora, share_=share,
                   fp32_outputs=fp32_outputs)

    def run() -> Iterator[Step]:
        before = model
        for kind, arg in steps:
            after = _run(before, kind, arg)
            yield Step(kind, arg, before, after)
            before = after
    return run()


def apply(model: Model, *, dtype: str | None = None, drop: Any = (), slice_width: int | None = None,
          rotation: Any = None, lora: Any = (), share: Any = (), fp32_outputs: bool = True
          ) -> tuple[Model, list[str]]:
    """Apply the requested transforms (drop, share, slice, lora, dtype, in that order) to a checked model.

    dtype: "bf16" or "fp16"; drop: parameter paths of residual sub-layers ("h.5.attn"); slice_width: the new
    residual width; rotation: its [D, D] orthogonal matrix, checked here (weights are converted by
    `nnspec.backends.torch.transform_params.convert_params`); lora: "PATTERN:RANK[:alpha=A][:randlora]" strings
    or `LoraSpec`s; share: "REPEAT:GROUPS" strings or (path, groups) pairs; fp32_outputs: see `to_dtype`.
    Returns the new model and one line per transform: what it did and how parameters and FLOPs changed.
    """
    steps = run_steps(model, dtype=dtype, drop=drop, slice_width=slice_width, lora=lora, share=share,
                      fp32_outputs=fp32_outputs)
    if rotation is not None and slice_width is None:
        raise TransformError("a rotation is only used by --slice")
    lines: list[str] = []
    for step in steps:
        if step.kind == "slice" and rotation is not None:
            check_rotation(step.before, rotation)
        lines.append(_explain(step.before, step.after))
        model = step.after
    return model, lines


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
