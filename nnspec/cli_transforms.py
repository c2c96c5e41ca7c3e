"""The transform flags of `nnspec check`, `compile` and `render`, generated from one table (`TRANSFORMS`).

Each row names a transform, its flag, its help, how the flag's value is read and the keyword of
`nnspec.compiler.transforms.apply` it fills. A command declares one parameter `transforms` and is decorated with
`transform_flags`, which puts a flag per row in that parameter's place and hands the command the requested
transforms as `apply` keywords (only the flags given):

```python
@app.command("check")
@T.transform_flags
def check_cmd(spec: ..., transforms: T.Requested = None, explain: T.ExplainOpt = False) -> None:
    pipeline = Pipeline(spec, transforms=transforms)
    result = pipeline.transformed                      # TransformError (exit 2) for a flag that does not apply
    if explain:
        T.print_explain(pipeline.transform_lines)
```

A new transform is a row here (and its keyword in `apply`): every command gets its flag.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer


def _items(values: list[str]) -> list[str]:
    """Repeated flags, each maybe comma- or space-separated: `--drop a,b --drop c` -> [a, b, c]."""
    return [v for value in values for v in re.split(r"[,\s]+", value) if v]


@dataclass(frozen=True)
class Transform:
    """One transform as the command line offers it."""

    name: str                     # the command function's parameter (a Python name)
    flag: str
    help: str
    type: Any                     # what typer parses the flag into (`list[str]` for a repeatable flag)
    keyword: str                  # the `apply` keyword the parsed value fills
    parse: Callable[[Any], Any] = lambda value: value
    metavar: str | None = None    # what help calls the value (`--dtype [bf16|fp16]`); by default its type's word


TRANSFORMS: tuple[Transform, ...] = (
    Transform("dtype", "--dtype", "store and compute in bf16 or fp16 (float32 for norms, softmax, reductions and "
              "the logits)", str, "dtype", metavar="[bf16|fp16]"),
    Transform("drop", "--drop", "remove a residual sub-layer by parameter path, e.g. h.5.attn (repeat or "
              "comma-separate)", list[str], "drop", _items, "PATH"),
    Transform("slice_", "--slice", "SliceGPT: reduce the residual stream to this width", int, "slice_width",
              metavar="WIDTH"),
    # the syntax in words, not `PATTERN:RANK[:alpha=A][:randlora]`: one token that long cannot wrap at 80 columns
    Transform("lora", "--lora", "adapters on matching linears: PATTERN:RANK, then :alpha=A and :randlora if wanted, "
              "e.g. '*.c_attn:8'", list[str], "lora", _items, "PATTERN:RANK"),
    Transform("share", "--share", "tie a repeat's weights in groups of consecutive iterations: REPEAT:GROUPS, "
              "e.g. h:4", list[str], "share", _items, "REPEAT:GROUPS"),
)

# the `apply` keywords of the flags given (an empty repeatable flag counts as not given)
Requested = dict[str, Any] | None
ExplainOpt = Annotated[bool, typer.Option("--explain", help="print each transform applied and its effect")]


def requested(values: dict[str, Any]) -> dict[str, Any]:
    """`apply` keywords from the flags' values, by parameter name."""
    out = {}
    for t in TRANSFORMS:
        value = values.get(t.name)
        if value is not None:
            parsed = t.parse(value)
            if parsed != []:
                out[t.keyword] = parsed
    return out


def transform_flags(command: Callable[..., None]) -> Callable[..., None]:
    """`command` with its `transforms` parameter replaced by one option per row of `TRANSFORMS`."""
    signature = inspect.signature(command, eval_str=True)
    flags = [inspect.Parameter(t.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                               annotation=Annotated[t.type | None,
                                                    typer.Option(t.flag, help=t.help, metavar=t.metavar)])
             for t in TRANSFORMS]
    params = []
    for p in signature.parameters.values():
        params += flags if p.name == "transforms" else [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)]

    @functools.wraps(command)
    def run(**kwargs: Any) -> None:
        values = {t.name: kwargs.pop(t.name, None) for t in TRANSFORMS}
        command(**kwargs, transforms=requested(values))

    run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


def print_explain(lines: list[str], file: object = None) -> None:
    """The `--explain` block: one line per transform, or a note that none was applied."""
    out = file or sys.stdout
    print("transforms:" if lines else "transforms: none", file=out)  # type: ignore[call-overload]
    for line in lines:
        print(f"  {line}", file=out)  # type: ignore[call-overload]
