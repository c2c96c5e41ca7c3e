"""`nnspec.build` and `nnspec compile`: spec -> generated PyTorch source -> module, by one code path.

`compile_spec` checks a spec and generates its file's text; `build` executes that same text as a module and
returns an instance of the model class; `write_outputs` is how `nnspec compile` puts files on disk
(all or nothing: a failed compile leaves no file, partial or otherwise).
"""

from __future__ import annotations

import linecache
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnspec.atomic import staged
from nnspec.compiler.check import CheckResult, check

TARGETS = ("torch",)


@dataclass
class Compiled:
    """One spec's generated module: its file name, source text and the check result it came from."""

    filename: str
    source: str
    result: CheckResult
    class_name: str


def compile_spec(path_or_text: str | os.PathLike[str], *, target: str = "torch", opt: int = 0,
                 config: str | os.PathLike[str] | None = None, **dims: Any) -> Compiled:
    """Check a spec and generate its standalone source for `target`.

    `opt`: the optimisation level (`nnspec.compiler.passes`): 0 generates the spec's graph as written, 1 and 2
    its optimised graph, which at 2 may hold fused attention (emitted as `F.scaled_dot_product_attention`).
    Passes run with `training=True`, so the module keeps every dropout and trains as the spec says; the
    state dict is the same at every level.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    from nnspec.backends.torch.codegen import OPT_LEVELS, ModuleGen
    if opt not in OPT_LEVELS:
        raise ValueError(f"opt must be one of {', '.join(map(str, OPT_LEVELS))}, got {opt!r}")
    result = check(path_or_text, config=config, **dims)
    model = result.model
    if opt:
        from nnspec.compiler.passes import optimize
        model = optimize(model, level=opt, training=True)
    gen = ModuleGen(model, spec_text=result.spec.source.text, doc=result.spec.doc, opt=opt)
    return Compiled(f"{result.model.name}.py", gen.generate(), result, gen.model_class)


def build(path_or_text: str | os.PathLike[str], *, target: str = "torch", opt: int = 0,
          config: str | os.PathLike[str] | None = None, **dims: Any) -> Any:
    """The `nn.Module` a spec describes, from the code `nnspec compile` writes (see `compile_spec`).

    Parameters are initialised as the spec says, from torch's global random state (`torch.manual_seed`).
    The module's class lives in a fresh module object whose source `inspect` and tracebacks can show.
    """
    compiled = compile_spec(path_or_text, target=target, opt=opt, config=config, **dims)
    module = load_source(compiled.source, compiled.result.model.name)
    instance = getattr(module, compiled.class_name)()
    instance.spec_model = compiled.result.model  # what nnspec.testing.inputs_for reads a built module's inputs from
    return instance


def load_source(source: str, name: str) -> types.ModuleType:
    """Execute generated source as a module registered in `sys.modules` (so pickling and torch.compile see
    a real module) with its text in `linecache` (so tracebacks show the generated lines)."""
    import hashlib
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    modname = f"nnspec_generated.{name}_{digest}"
    if modname in sys.modules:
        return sys.modules[modname]
    filename = f"<nnspec generated {name} {digest}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    module = types.ModuleType(modname)
    module.__file__ = filename
    exec(compile(source, filename, "exec"), module.__dict__)  # our own generated code
    sys.modules[modname] = module
    return module


def write_outputs(outputs: list[Compiled], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write every file or none: each goes to a temporary file beside its target, renamed into place once all
    are written. Refuses two outputs with the same file name."""
    names = [c.filename for c in outputs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"two specs would both write {', '.join(dupes)} (specs are named by their `name:`)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    finals = [out / c.filename for c in outputs]
    with staged(finals) as temps:
        for c, tmp in zip(outputs, temps, strict=True):
            Path(tmp).write_bytes(c.source.encode("utf-8"))
    return finals
