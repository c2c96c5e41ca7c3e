"""`nnspec.build` and `nnspec compile`: spec -> generated source -> module, by one code path (`nnspec.pipeline`).

`compile_spec` checks a spec and generates its file's text; `build` executes that same text as a module and
returns an instance of the model class; both are the pipeline's `artifact` and `build` stages behind the
keyword arguments they have always taken. `write_outputs` is how `nnspec compile` puts files on disk
(all or nothing: a failed compile leaves no file, partial or otherwise).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nnspec.atomic import staged
from nnspec.backends.base import names
from nnspec.backends.loading import cache_dir, load_source
from nnspec.pipeline import Compiled, Pipeline, level_of

__all__ = ["Compiled", "build", "cache_dir", "compile_spec", "load_source", "write_outputs"]


def compile_spec(path_or_text: str | os.PathLike[str], *, target: str = "torch", opt: int | None = None,
                 config: str | os.PathLike[str] | None = None, passes: str | Sequence[str] | None = None,
                 explain: list[str] | Callable[[str], None] | None = None,
                 transforms: Mapping[str, Any] | None = None, backend_options: Mapping[str, bool] | None = None,
                 **dims: Any) -> Compiled:
    """Check a spec and generate its standalone source for `target`.

    `opt`: the optimisation level (`nnspec.compiler.passes`): 0 generates the spec's graph as written, 1 and 2
    its optimised graph, which at 2 may hold fused attention (emitted as `F.scaled_dot_product_attention`).
    `passes` (`"cse,dce"` or a list of names) runs exactly those passes instead of the level's; the level
    then only decides how fused ops are emitted (default 2 with `passes`, else 0).
    Passes run with `training=True`, so the module keeps every dropout and trains as the spec says; the
    state dict is the same at every level.
    `transforms`: keyword arguments of `nnspec.compiler.transforms.apply` (`{"dtype": "bf16", "drop":
    ["h.5.attn"]}`), applied to the checked model before any pass.
    `backend_options`: the target's options by name over the level's choice (`{"parallel_scan": True}`; the
    options are listed by `nnspec.backends.base.get(target).options`).
    `explain`: a list to append to, or a callable taking, each line: the transforms applied (`transform: ...`),
    then every rewrite, fusion group formed and fusion refused. `Compiled.transforms` and `Compiled.explain`
    hold the same lines.
    """
    pipeline = _pipeline(path_or_text, target, opt, passes, config, explain, transforms, dims, backend_options)
    return pipeline.artifact(target, opt, passes)


def build(path_or_text: str | os.PathLike[str], *, target: str = "torch", opt: int | None = None,
          config: str | os.PathLike[str] | None = None, passes: str | Sequence[str] | None = None,
          explain: list[str] | Callable[[str], None] | None = None, transforms: Mapping[str, Any] | None = None,
          max_memory: int | None = None, backend_options: Mapping[str, bool] | None = None, **dims: Any) -> Any:
    """The `nn.Module` a spec describes, from the code `nnspec compile` writes (see `compile_spec` for the
    arguments).

    Before anything is allocated, the parameters' and buffers' bytes are estimated: above `max_memory` (default:
    a fraction of physical memory, `nnspec.compiler.analysis.default_max_memory`) it raises `nnspec.ResourceError`
    with the estimate in its message.

    Parameters are initialised as the spec says, from torch's global random state (`torch.manual_seed`).
    The module's class lives in a fresh module object whose source `inspect` and tracebacks can show.
    """
    pipeline = _pipeline(path_or_text, target, opt, passes, config, explain, transforms, dims, backend_options)
    return pipeline.build(target, opt, passes, max_memory=max_memory)


def _pipeline(path_or_text: str | os.PathLike[str], target: str, opt: int | None,
              passes: str | Sequence[str] | None, config: str | os.PathLike[str] | None,
              explain: list[str] | Callable[[str], None] | None, transforms: Mapping[str, Any] | None,
              dims: dict[str, Any], backend_options: Mapping[str, bool] | None = None) -> Pipeline:
    """The pipeline for one request, its target and level refused (ValueError) before the spec is read."""
    if target not in names():
        raise ValueError(f"unknown target {target!r}; known: {', '.join(names())}")
    level_of(opt, passes)
    return Pipeline(path_or_text, config=config, overrides=dims, transforms=transforms, explain=explain,
                    backend_options=backend_options)


def write_outputs(outputs: list[Compiled], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write every file or none: each goes to a temporary file beside its target, renamed into place once all
    are written. Refuses two outputs with the same file name."""
    names = [c.filename for c in outputs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        from nnspec.compiler.elaborate import UsageError
        raise UsageError(f"two specs would both write {', '.join(dupes)} (specs are named by their `name:`)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    finals = [out / c.filename for c in outputs]
    with staged(finals) as temps:
        for c, tmp in zip(outputs, temps, strict=True):
            Path(tmp).write_bytes(c.source.encode("utf-8"))
    return finals
