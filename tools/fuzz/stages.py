"""The stages a mutant goes through, the property each must keep, and the counts of where mutants stopped."""

from __future__ import annotations

import contextlib
import signal
import traceback
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnspec.compiler.elaborate import UsageError
from nnspec.errors import SpecError
from nnspec.pipeline import Pipeline
from nnspec.spec.yaml_loader import load_yaml
from tools.fuzz.execute import (
    SKIP_EXECUTIONS,
    SKIP_NUMEL,
    SKIP_PARAM_BYTES,
    check_outputs,
    executions,
    free_sizes,
    largest_numel,
    make_inputs,
    run_generated,
    shrink_dims,
)
from tools.fuzz.seeds import Mutant, Seed


class FuzzFailure(AssertionError):
    """A mutant broke the property. The message holds the mutations, the text and the trace."""


class FuzzTimeout(BaseException):
    """A mutant ran past `TIMEOUT_S` (not an Exception, so nothing on the way up catches it)."""


STAGES = ("load", "schema", "check", "codegen", "run")
TIMEOUT_S = 30                  # one mutant, all stages; a hang is a failure
GENERATED_OPT_LEVELS = (0, 2)  # the generated module as written and optimised: each is run against the interpreter
TARGETS = ("torch", "triton")  # every target's file is generated, compiled by Python and run (Triton's fallbacks)


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """The per-mutant time bound. The alarm repeats every 2 s after the first (an exception raised inside a gc
    callback or a C extension is ignored), and a mutant whose alarm fired is a timeout even if none reached us."""
    fired: list[int] = []

    def fire(signum: int, frame: Any) -> None:
        fired.append(signum)
        raise FuzzTimeout(f"no result after {seconds}s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds, 2.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if fired:
        raise FuzzTimeout(f"ran past {seconds}s (the alarm fired {len(fired)} times, caught on the way)")


def span_problem(err: SpecError, sources: dict[str, str]) -> str | None:
    """Why `err` (or one of its notes) is not located in the spec or an included file; None when it is."""
    spans = [("error", err.span)] + [(f"note {n.message!r}", n.span) for n in err.notes]
    for what, span in spans:
        if span is None:
            if what == "error":
                return "the error has no span"
            continue
        text = span.source.text
        expected = sources.get(span.source.name)
        undecodable = span.source.name in sources and f"{span.source.name}#raw" in sources
        if undecodable and expected is not None and expected.startswith(text):
            pass  # bytes that are not text: the error is located in the part that decoded
        elif expected != text and not _is_included(span.source):
            return f"{what} points into {span.source.name!r}, which is neither the spec nor an included file"
        lines = text.split("\n")
        if not (1 <= span.line <= len(lines)):
            return f"{what} line {span.line} is outside the text ({len(lines)} lines)"
        if not (1 <= span.col <= len(lines[span.line - 1]) + 1):
            return f"{what} column {span.col} is outside line {span.line} ({len(lines[span.line - 1])} characters)"
        if (span.end_line, span.end_col) < (span.line, span.col):
            return f"{what} ends before it starts"
    return None


def _is_included(source: Any) -> bool:
    from nnspec.spec.load import STDLIB
    origin = source.origin
    if origin is None:
        return False
    path = Path(origin)
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return path.resolve().is_relative_to(STDLIB) and data.decode("utf-8", "replace").lstrip("\ufeff") == source.text


@dataclass
class FuzzRun:
    """Runs mutants through the stages, checks the property, and counts where each one stopped."""

    seeds: list[Seed]
    workdir: Path
    counts: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    skips: Counter[str] = field(default_factory=Counter)
    mutators: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    run_stage: bool = True
    stage: str = "load"

    def one(self, mutant: Mutant) -> str:
        """The last stage the mutant reached ('ok' if it passed them all); raises FuzzFailure on a violation."""
        path = self.workdir / "spec.yaml"
        path.write_bytes(mutant.data)
        self.stage = "load"
        self._small(mutant.seed)  # the seed's small dims, found once and not on the mutant's time
        try:
            with time_limit(TIMEOUT_S):
                self._stages(mutant, path)
        except SpecError as err:
            stage = self.stage
            problem = span_problem(err, self._sources(mutant, path))
            try:
                err.render()
                err.to_json()
            except Exception as e:
                problem = f"the error cannot be rendered: {type(e).__name__}: {e}"
            if problem is not None:
                raise FuzzFailure(self._describe(mutant, stage, f"{problem}\n{err.code}: {err.message}")) from err
            self.counts[f"{stage}: refused"] += 1
            self.codes[f"{stage} {err.code}"] += 1
            self._by_mutator(mutant, f"{stage}: refused")
            return stage
        except FuzzFailure:
            raise
        except (Exception, FuzzTimeout) as e:
            raise FuzzFailure(self._describe(mutant, self.stage, "".join(traceback.format_exception(e)))) from e
        self.counts[f"{self.stage}: passed"] += 1
        self._by_mutator(mutant, f"{self.stage}: passed")
        return self.stage

    def _by_mutator(self, mutant: Mutant, outcome: str) -> None:
        """Counts the outcome once for each kind of mutation the mutant had (`expr.number`, `bytes.flip`)."""
        for kind in sorted({m.split(":", 1)[0] for m in mutant.mutations}):
            self.mutators[kind][outcome] += 1

    def _sources(self, mutant: Mutant, path: Path) -> dict[str, str]:
        from nnspec.spec.yaml_loader import decode
        try:
            return {str(path): decode(mutant.data, str(path)).text}
        except SpecError:
            data = mutant.data[3:] if mutant.data.startswith(b"\xef\xbb\xbf") else mutant.data
            return {str(path): data.decode("utf-8", "replace"), f"{path}#raw": ""}

    def _describe(self, mutant: Mutant, stage: str, problem: str) -> str:
        return (f"stage {stage}: {problem}\nseed {mutant.seed.name}, mutations:\n  " + "\n  ".join(mutant.mutations)
                + f"\n{mutant.diff()}")

    def _stages(self, mutant: Mutant, path: Path) -> None:
        """Runs the stages, keeping `self.stage` at the one running; ends at the last one that passed.

        The pipeline computes each of its stages when first read, so reading them in order says which one refused
        the mutant. The `load` stage parses the top-level YAML itself (the pipeline's `spec` parses it once more):
        an error after that parse is the schema stage's."""
        pipeline = Pipeline(path)
        load_yaml(pipeline.source)
        self.stage = "schema"
        spec = pipeline.spec
        self.stage = "check"
        result = pipeline.checked
        self.stage = "codegen"
        generated = self._generate(pipeline)
        if not self.run_stage:
            return
        self.stage = "run"
        small = self._small(mutant.seed)
        if small:
            pipeline = Pipeline(spec, overrides={k: v for k, v in small.items() if k in spec.dims})
            try:
                result = pipeline.checked
            except (SpecError, UsageError):
                self.skips["run: the shrunk model does not check"] += 1
                self.stage = "codegen"
                return
            generated = self._generate(pipeline)
        self.stage = "run" if self._run(result, generated) else "codegen"
        if self.stage == "run":
            self.stage = "ok"

    def _generate(self, pipeline: Pipeline) -> list[tuple[str, str, str]]:
        """(label, source, model class) of each target's module at -O0 and -O2, each compiled by Python."""
        out = []
        for target in TARGETS:
            for opt in GENERATED_OPT_LEVELS:
                compiled = pipeline.artifact(target, opt)
                label = f"{target} -O{opt}"
                compile(compiled.source, f"<generated {label}>", "exec")
                out.append((label, compiled.source, compiled.class_name))
        return out

    # -- the run stage --
    def _small(self, seed: Seed) -> dict[str, int] | None:
        if not seed.small_done:
            seed.small = shrink_dims(seed.text)
            seed.small_done = True
        return seed.small

    def _run(self, result: Any, generated: list[tuple[str, str, str]]) -> bool:
        try:
            import torch
        except ImportError:
            self.skips["run: no torch"] += 1
            return False
        # tiny tensors: a second thread only waits (on a busy machine, 8 ms per op instead of 3 us)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._run_models(result, generated, torch)
        finally:
            torch.set_num_threads(threads)

    def _run_models(self, result: Any, generated: list[tuple[str, str, str]], torch: Any) -> bool:
        from nnspec.backends.torch.interpreter import Interpreter, RuntimeShapeError
        from nnspec.compiler.analysis import estimate_parameter_bytes

        model = result.model
        if estimate_parameter_bytes(model) > SKIP_PARAM_BYTES:
            self.skips["run: parameters too large"] += 1
            return False
        if executions(model) > SKIP_EXECUTIONS:
            self.skips["run: too many op executions once repeats are unrolled"] += 1
            return False
        interp = Interpreter(model).eval()
        for value in (4, 2, 8, 1, 16, 6, 3, 32):
            sizes = free_sizes(model, value)
            if sizes is None:
                self.skips["run: free dims cannot be bound"] += 1
                return False
            if largest_numel(model, sizes) > SKIP_NUMEL:
                continue
            inputs = make_inputs(model, sizes, torch)
            try:
                interp.bind_sizes(inputs)
            except RuntimeShapeError:
                continue                                      # a guard does not hold for these sizes
            try:
                with torch.no_grad():
                    outputs = interp(**inputs)
            except (RuntimeError, IndexError) as e:
                # values the spec computes (an index * -1, an integer // 0) are no type error check can see: the
                # run refuses them, as torch does for such inputs; anything else is a bug
                data = ("ZeroDivisionError", "out of bounds", "index out of range", "out of range in self")
                if not any(text in str(e) for text in data):
                    raise
                self.skips["run: integer division by zero or an index out of range, in computed values"] += 1
                return False
            check_outputs(model, outputs, sizes, torch)
            allocated = sum(p.numel() for p in interp.parameters())
            if allocated != result.params:
                raise AssertionError(f"check counts {result.params:,} parameters, the interpreter allocates "
                                     f"{allocated:,}")
            for label, text, class_name in generated:
                directory = self.workdir / "generated" if label.startswith("triton") else None
                run_generated(text, class_name, interp, inputs, outputs, torch, label, directory)
            return True
        self.skips["run: no small binding of the free dims"] += 1
        return False

    def summary(self) -> str:
        """Per stage: how many mutants it refused (located SpecErrors) and how many went past it."""
        total = sum(self.counts.values())
        order = (*STAGES, "ok")
        passed = Counter[str]()
        refused = Counter[str]()
        for key, n in self.counts.items():
            stage, _, how = key.partition(": ")
            if how == "refused":
                refused[stage] += n
            last = order.index(stage) - (1 if how == "refused" else 0)
            for s in order[:last + 1]:
                passed[s] += n
        lines = [f"fuzz: {total} mutants", f"  {'stage':8} {'refused':>8} {'passed':>8}"]
        lines += [f"  {s:8} {refused[s]:8} {passed[s]:8}" for s in STAGES]
        lines.append("  codes: " + ", ".join(f"{k} x{n}" for k, n in sorted(self.codes.items())))
        if self.skips:
            lines.append("  skipped: " + ", ".join(f"{k} x{n}" for k, n in sorted(self.skips.items())))
        lines += self._mutator_table()
        return "\n".join(lines)

    def _mutator_table(self) -> list[str]:
        """Per kind of mutation: how many mutants had it, where they were refused, how many went through checking
        but were not run (`unrun`: too large, no binding of the free dims) and how many ran (`ran`)."""
        cols = [*(f"{s}: refused" for s in STAGES), "codegen: passed", "ok: passed"]
        heads = [*STAGES, "unrun", "ran"]
        lines = ["  by mutation (where the mutants that had it stopped):",
                 f"    {'mutation':21} {'mutants':>7} " + " ".join(f"{h:>7}" for h in heads)]
        for kind in sorted(self.mutators):
            row = self.mutators[kind]
            lines.append(f"    {kind:21} {sum(row.values()):7} " + " ".join(f"{row[c]:7}" for c in cols))
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "codes": dict(self.codes), "skips": dict(self.skips),
                "mutators": {k: dict(v) for k, v in sorted(self.mutators.items())}}
