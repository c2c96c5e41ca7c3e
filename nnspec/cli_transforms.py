"""The transform flags (`--dtype --drop --slice --lora --share --explain`), shared by `nnspec check`, `compile`
and `render`.

A command declares the flags with the `*Opt` aliases below and passes their values to `transform_result`
after checking the spec:

```python
from nnspec import cli_transforms as T

def check_cmd(spec: ..., dtype: T.DtypeOpt = None, drop: T.DropOpt = None, slice_: T.SliceOpt = None,
              lora: T.LoraOpt = None, share: T.ShareOpt = None, explain: T.ExplainOpt = False) -> None:
    result = check(spec, ...)
    result, lines = T.transform_result(result, dtype=dtype, drop=drop, slice_=slice_, lora=lora, share=share)
    if explain:
        T.print_explain(lines)
```

`transform_result` raises `TransformError`, a `UsageError` (exit 2), for a flag that does not apply (a path
that names nothing, a structure a transform does not recognise). The result's `model` is the transformed
model (`model.transforms` lists what was applied); its rows, parameter count and FLOPs are recomputed.
"""

from __future__ import annotations

import re
import sys
from typing import Annotated

import typer

from nnspec.compiler.check import CheckResult

DtypeOpt = Annotated[str | None, typer.Option(
    "--dtype", help="store and compute in bf16 or fp16 (float32 for norms, softmax, reductions and the logits)")]
DropOpt = Annotated[list[str] | None, typer.Option(
    "--drop", help="remove a residual sub-layer by parameter path, e.g. h.5.attn (repeat or comma-separate)")]
SliceOpt = Annotated[int | None, typer.Option(
    "--slice", help="SliceGPT: reduce the residual stream to this width")]
LoraOpt = Annotated[list[str] | None, typer.Option(
    "--lora", help="adapters on matching linears: PATTERN:RANK[:alpha=A][:randlora], e.g. '*.c_attn:8'")]
ShareOpt = Annotated[list[str] | None, typer.Option(
    "--share", help="tie a repeat's weights in groups of consecutive iterations: REPEAT:GROUPS, e.g. h:4")]
ExplainOpt = Annotated[bool, typer.Option("--explain", help="print each transform applied and its effect")]


def _items(values: list[str] | None) -> list[str]:
    return [v for value in values or [] for v in re.split(r"[,\s]+", value) if v]


def transform_result(result: CheckResult, *, dtype: str | None = None, drop: list[str] | None = None,
                     slice_: int | None = None, lora: list[str] | None = None, share: list[str] | None = None
                     ) -> tuple[CheckResult, list[str]]:
    """`result` with the flags' transforms applied (unchanged when no flag is given) and the explain lines."""
    from nnspec.compiler.check import _report
    from nnspec.compiler.transforms import apply

    if dtype is None and not drop and slice_ is None and not lora and not share:
        return result, []
    model, lines = apply(result.model, dtype=dtype, drop=_items(drop), slice_width=slice_, lora=_items(lora),
                         share=_items(share))
    return _report(model, result.spec, result.warnings), lines


def print_explain(lines: list[str], file: object = None) -> None:
    """The `--explain` block: one line per transform, or a note that none was applied."""
    out = file or sys.stdout
    print("transforms:" if lines else "transforms: none", file=out)  # type: ignore[call-overload]
    for line in lines:
        print(f"  {line}", file=out)  # type: ignore[call-overload]
