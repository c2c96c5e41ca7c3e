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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnspec.atomic import staged
from nnspec.compiler.check import CheckResult, check

TARGETS = ("torch", "triton")


@dataclass
class Compiled:
    """One spec's generated module: its file name, source text and the check result it came from."""

    filename: str
    source: str
    result: CheckResult
    class_name: str
    transforms: list[str] = field(default_factory=list)   # one line per transform applied (`--explain`)
    explain: list[str] = field(default_factory=list)      # the passes' rewrites, groups and refusals


def compile_spec(path_or_text: str | os.PathLike[str], *, target: str = "torch", opt: int | None = None,
                 config: str | os.PathLike[str] | None = None, passes: str | Sequence[str] | None = None,
                 explain: list[str] | Callable[[str], None] | None = None,
                 transforms: Mapping[str, Any] | None = None, **dims: Any) -> Compiled:
    """Check a spec and generate its standalone source for `target`.

    `opt`: the optimisation level (`nnspec.compiler.passes`): 0 generates the spec's graph as written, 1 and 2
    its optimised graph, which at 2 may hold fused attention (emitted as `F.scaled_dot_product_attention`).
    `passes` (`"cse,dce"` or a list of names) runs exactly those passes instead of the level's; the level
    then only decides how fused ops are emitted (default 2 with `passes`, else 0).
    Passes run with `training=True`, so the module keeps every dropout and trains as the spec says; the
    state dict is the same at every level.
    `transforms`: keyword arguments of `nnspec.compiler.transforms.apply` (`{"dtype": "bf16", "drop":
    ["h.5.attn"]}`), applied to the checked model before any pass.
    `explain`: a list to append to, or a callable taking, each line: the transforms applied (`transform: ...`),
    then every rewrite, fusion group formed and fusion refused. `Compiled.transforms` and `Compiled.explain`
    hold the same lines.
    """
    if opt is None:
        opt = 2 if passes is not None else 0
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    from nnspec.backends.torch.codegen import OPT_LEVELS, ModuleGen
    if opt not in OPT_LEVELS:
        raise ValueError(f"opt must be one of {', '.join(map(str, OPT_LEVELS))}, got {opt!r}")
    result = check(path_or_text, config=config, **dims)
    sink = explain.append if isinstance(explain, list) else explain
    transform_lines: list[str] = []
    if transforms:
        from nnspec.compiler.check import _report
        from nnspec.compiler.transforms import apply
        transformed, transform_lines = apply(result.model, **transforms)
        result = _report(transformed, result.spec, result.warnings)
        for line in transform_lines:
            if sink is not None:
                sink(f"transform: {line}")
        _refuse_repeat_variants(result.model)
    model = result.model
    lines: list[str] = []
    if opt or passes is not None:
        from nnspec.compiler.passes import optimize

        def note(line: str) -> None:
            lines.append(line)
            if sink is not None:
                sink(line)
        model = optimize(model, level=opt, passes=passes, explain=note, training=True)
    if target == "triton":
        from nnspec.backends.triton.codegen import TritonModuleGen
        gen: ModuleGen = TritonModuleGen(model, spec_text=result.spec.source.text, doc=result.spec.doc, opt=opt)
    else:
        gen = ModuleGen(model, spec_text=result.spec.source.text, doc=result.spec.doc, opt=opt)
    source = gen.generate()
    for line in gen.explain:   # what the backend chose: kernels, torch fallbacks, fused linears
        lines.append(line)
        if sink is not None:
            sink(line)
    return Compiled(f"{result.model.name}.py", source, result, gen.model_class, transform_lines, lines)


def _refuse_repeat_variants(model: Any) -> None:
    """The code generator writes a repeat as one block class applied to every weight set in turn; a repeat whose
    iterations differ (`--drop`, `--lora` on some iterations) or share weights in groups (`--share`) would come
    out as the untransformed model, so it is refused rather than generated wrong."""
    from nnspec.compiler.elaborate import UsageError
    for graph in model.graphs():
        for node in graph:
            if node.op == "repeat" and (node.attrs.get("variants") or node.attrs.get("groups")):
                what = "iterations that differ" if node.attrs.get("variants") else "weights shared in groups"
                raise UsageError(f"code generation does not support a repeat with {what} yet (repeat "
                                 f"'{node.attrs['scope']}' after the transforms); the reference interpreter "
                                 "(nnspec.backends.torch.Interpreter) runs the transformed model")


def build(path_or_text: str | os.PathLike[str], *, target: str = "torch", opt: int | None = None,
          config: str | os.PathLike[str] | None = None, passes: str | Sequence[str] | None = None,
          explain: list[str] | Callable[[str], None] | None = None, transforms: Mapping[str, Any] | None = None,
          max_memory: int | None = None, **dims: Any) -> Any:
    """The `nn.Module` a spec describes, from the code `nnspec compile` writes (see `compile_spec` for the
    arguments).

    Before anything is allocated, the parameters' and buffers' bytes are estimated: above `max_memory` (default:
    a fraction of physical memory, `nnspec.compiler.analysis.default_max_memory`) it raises `nnspec.ResourceError`
    with the estimate in its message.

    Parameters are initialised as the spec says, from torch's global random state (`torch.manual_seed`).
    The module's class lives in a fresh module object whose source `inspect` and tracebacks can show.
    """
    compiled = compile_spec(path_or_text, target=target, opt=opt, config=config, passes=passes, explain=explain,
                            transforms=transforms, **dims)
    from nnspec.compiler.analysis import check_memory, default_max_memory
    check_memory(compiled.result.model, max_memory if max_memory is not None else default_max_memory())
    # @triton.jit reads its kernels' source from a real file: the Triton target's module goes to the cache
    directory = cache_dir() if target == "triton" else None
    module = load_source(compiled.source, compiled.result.model.name, directory)
    instance = getattr(module, compiled.class_name)()
    instance.spec_model = compiled.result.model  # what nnspec.testing.inputs_for reads a built module's inputs from
    return instance


def cache_dir() -> Path:
    """Where `build(target="triton")` writes generated files: `$NNSPEC_CACHE_DIR`, else ~/.cache/nnspec."""
    root = os.environ.get("NNSPEC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nnspec")
    return Path(root) / "generated"


def load_source(source: str, name: str, directory: Path | None = None) -> types.ModuleType:
    """Execute generated source as a module registered in `sys.modules` (so pickling and torch.compile see
    a real module) with its text in `linecache` (so tracebacks show the generated lines). With `directory`,
    the source is first written there as `<name>_<hash>.py` (atomically) and executed from that file."""
    import hashlib
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    modname = f"nnspec_generated.{name}_{digest}"
    if modname in sys.modules:
        return sys.modules[modname]
    if directory is not None:
        path = directory / f"{name}_{digest}.py"
        if not path.exists() or path.read_bytes() != source.encode("utf-8"):
            from nnspec.atomic import write_atomic
            directory.mkdir(parents=True, exist_ok=True)
            write_atomic(path, source.encode("utf-8"))
        filename = str(path)
    else:
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
        from nnspec.compiler.elaborate import UsageError
        raise UsageError(f"two specs would both write {', '.join(dupes)} (specs are named by their `name:`)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    finals = [out / c.filename for c in outputs]
    with staged(finals) as temps:
        for c, tmp in zip(outputs, temps, strict=True):
            Path(tmp).write_bytes(c.source.encode("utf-8"))
    return finals
