"""The compiler's one path: spec -> checked model -> transformed -> optimized -> artifact.

`Pipeline` holds one spec's stages. Each is computed on first use, and once: the CLI (check, compile, render),
`nnspec.build` / `compile_spec`, docs generation and the fuzzer all read the stages they need from it instead of
re-assembling them, and a tool that wants to know which stage refused a spec reads them one at a time.

- `source`: the spec's text (read from a file, or given), `spec`: the loaded spec (a `Spec` may be given instead
  of a path, so a second pipeline with other overrides does not load it again);
- `checked`: elaborated and analysed (`nnspec.check`), with `overrides` (dims, options, free dims) and `config`;
- `transformed`: the `transforms` applied (keywords of `nnspec.compiler.transforms.apply`); the checked result
  itself when there are none. Each result's report (rows, parameters, FLOPs) is computed when first read;
- `optimized(opt, passes)`: the passes of level `opt` (or exactly `passes`), run for training (dropout kept);
- `artifact(target, opt, passes)`: the generated source, from the backend registered as `target`, with the backend
  options that level turns on (`LEVEL_OPTIONS`): the level selects passes, the pipeline chooses options, and the
  backend never infers either.

`explain` (a list, or a callable taking each line) receives every line as it is produced: the transforms applied
(`transform: ...`), then each pass's rewrites, groups formed and fusions refused, then what the backend chose.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from nnspec.backends.base import Generated, get, resolve_options
from nnspec.compiler.analysis import check_memory, default_max_memory
from nnspec.compiler.check import CheckResult, check_spec
from nnspec.compiler.elaborate import UsageError
from nnspec.compiler.ir import Model
from nnspec.compiler.passes import PIPELINES, level_label, optimize
from nnspec.spec.load import Spec, load_source, read_source
from nnspec.spec.source import Source

ExplainSink = list[str] | Callable[[str], None] | None

# backend options each optimisation level turns on; a backend is given those it declares
# `parallel_scan` is not among -O2's: on CPU it was slower than the step loop on Mamba (0.40x against 1.13x HF, see
# benchmarks/RESULTS.md); it is asked for by name (`backend_options={"parallel_scan": True}`)
LEVEL_OPTIONS: dict[int, dict[str, Any]] = {0: {}, 1: {}, 2: {"fused_linear": True, "sdpa": True,
                                                     "regroup_contractions": True, "kept_casts": True}}


@dataclass
class Compiled:
    """One spec's generated module: its file name, source text and the check result it came from."""

    filename: str
    source: str
    result: CheckResult
    class_name: str
    transforms: list[str] = field(default_factory=list)   # one line per transform applied (`--explain`)
    explain: list[str] = field(default_factory=list)      # the passes' rewrites, groups and refusals
    target: str = "torch"                                  # the backend that generated it (and loads it)

    def to_json(self) -> dict[str, Any]:
        """`nnspec compile --json`: what was generated, and the explain lines sorted by kind: the passes' rewrites
        (and groups and refusals), the kernels generated, the ops left to torch, and the backend's other notes."""
        kinds: dict[str, list[str]] = {"rewrites": [], "kernels": [], "fallbacks": [], "notes": []}
        for line in self.explain:
            text = line.strip()
            if text.startswith(("kernel ", "template kernel")):
                kinds["kernels"].append(text)
            elif text.startswith("torch fallback"):
                kinds["fallbacks"].append(text.removeprefix("torch fallback: "))
            elif text.startswith(("torch:", "triton:")):
                kinds["notes"].append(text)
            else:
                kinds["rewrites"].append(text)
        return {"name": self.result.model.name, "file": self.filename, "class": self.class_name,
                "target": self.target, "transforms": self.transforms, **kinds}


@dataclass(frozen=True)
class Optimized:
    """A model after the passes, and the lines they explained themselves with."""

    model: Model
    explain: list[str]


def level_of(opt: int | None, passes: str | Sequence[str] | None) -> int:
    """The optimisation level a request means: `opt`, else 2 with an explicit pass list (fused ops emitted as at
    -O2), else 0. ValueError for a level that does not exist."""
    level = opt if opt is not None else 2 if passes is not None else 0
    if level not in PIPELINES:
        raise ValueError(f"opt must be one of {', '.join(map(str, PIPELINES))}, got {level!r}")
    return level


class Pipeline:
    """One spec's stages, each computed on first use and once (see the module's docstring)."""

    def __init__(self, spec: str | os.PathLike[str] | Spec, *, config: str | os.PathLike[str] | None = None,
                 overrides: Mapping[str, Any] | None = None, transforms: Mapping[str, Any] | None = None,
                 explain: ExplainSink = None, backend_options: Mapping[str, bool] | None = None) -> None:
        self._given = spec
        # options the caller turns on or off over the level's choice (`LEVEL_OPTIONS`), by name
        self.backend_options = dict(backend_options or {})
        self.config = config
        self.overrides = dict(overrides or {})
        self.transforms = dict(transforms or {})
        self._sink = explain.append if isinstance(explain, list) else explain
        self._optimized: dict[tuple[int, tuple[str, ...] | None], Optimized] = {}
        self._artifacts: dict[tuple[str, int, tuple[str, ...] | None], Compiled] = {}

    def _say(self, line: str) -> None:
        if self._sink is not None:
            self._sink(line)

    # -- the front: one spec, one set of overrides and transforms --
    @cached_property
    def source(self) -> Source:
        """The spec's text: a path (or a string without a newline) is read, other text taken as it is."""
        return self._given.source if isinstance(self._given, Spec) else read_source(self._given)

    @cached_property
    def spec(self) -> Spec:
        return self._given if isinstance(self._given, Spec) else load_source(self.source)

    @cached_property
    def checked(self) -> CheckResult:
        return check_spec(self.spec, config=self.config, **self.overrides)

    @cached_property
    def _transformation(self) -> tuple[CheckResult, list[str]]:
        if not self.transforms:
            return self.checked, []
        from nnspec.compiler.transforms import apply
        model, lines = apply(self.checked.model, **self.transforms)
        for line in lines:
            self._say(f"transform: {line}")
        return self.checked.with_model(model), lines

    @property
    def transformed(self) -> CheckResult:
        """The checked result with the transforms applied (`model.transforms` lists them)."""
        return self._transformation[0]

    @property
    def transform_lines(self) -> list[str]:
        """One line per transform applied: what it did and how parameters and FLOPs changed."""
        return self._transformation[1]

    # -- the back: once per optimisation and target --
    def optimized(self, opt: int | None = None, passes: str | Sequence[str] | None = None) -> Optimized:
        """The transformed model after level `opt`'s passes (or exactly `passes`), run for training; at -O0
        without `passes`, the transformed model itself."""
        level = level_of(opt, passes)
        model = self.transformed.model
        key = (level, _names(passes))
        if key not in self._optimized:
            lines: list[str] = []
            if level or passes is not None:
                def note(line: str) -> None:
                    lines.append(line)
                    self._say(line)
                model = optimize(model, level=level, passes=passes, explain=note, training=True)
            self._optimized[key] = Optimized(model, lines)
        return self._optimized[key]

    def artifact(self, target: str = "torch", opt: int | None = None,
                 passes: str | Sequence[str] | None = None) -> Compiled:
        """The standalone source `target` generates for the optimised model. A model the backend refuses (a
        transformed repeat it cannot write) is a `UsageError`, raised before any pass runs."""
        backend = get(target)
        level = level_of(opt, passes)
        key = (target, level, _names(passes))
        if key not in self._artifacts:
            result = self.transformed
            reason = backend.refuses(result.model)
            if reason is not None:
                raise UsageError(reason)
            optimized = self.optimized(level, passes)
            declared = {o.name for o in backend.options}
            chosen = {k: v for k, v in LEVEL_OPTIONS[level].items() if k in declared}
            try:
                options = resolve_options(backend, {**chosen, **self.backend_options})
            except ValueError as err:
                raise UsageError(str(err)) from None
            generated = backend.generate(optimized.model, spec_text=result.spec.source.text, doc=result.spec.doc,
                                         label=level_label(optimized.model, level), options=options)
            for line in generated.explain:
                self._say(line)
            self._artifacts[key] = Compiled(f"{result.model.name}.py", generated.source, result,
                                            generated.class_name, self.transform_lines,
                                            [*optimized.explain, *generated.explain], target)
        return self._artifacts[key]

    def build(self, target: str = "torch", opt: int | None = None, passes: str | Sequence[str] | None = None,
              *, max_memory: int | None = None) -> Any:
        """An instance of the generated module's model class (see `nnspec.build`), refused with
        `ResourceError` before anything is allocated when its parameters and buffers exceed `max_memory`."""
        compiled = self.artifact(target, opt, passes)
        check_memory(compiled.result.model, max_memory if max_memory is not None else default_max_memory())
        module = get(target).load(Generated(compiled.source, compiled.class_name), compiled.result.model.name)
        instance = getattr(module, compiled.class_name)()
        instance.spec_model = compiled.result.model  # what nnspec.testing.inputs_for reads a module's inputs from
        instance.spec_result = compiled.result  # what nnspec.save_pretrained writes config.json from
        instance._repr_html_ = compiled.result._repr_html_   # a notebook shows the check table and block graph
        return instance


def _names(passes: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """An explicit pass list as a key (`"cse, dce"` and `["cse", "dce"]` alike); unknown names are refused when
    the passes run, after checking, as `optimize` always has."""
    if passes is None:
        return None
    names = passes.split(",") if isinstance(passes, str) else passes
    return tuple(n.strip() for n in names if n.strip())

