"""The mutation fuzzer (issue 8): valid specs mutated at every level must go through every stage, or be refused
with a `SpecError` located in the spec. Anything else is an nnspec bug: minimise it, add a regression test to
tests/test_fuzz_regressions.py, fix it.

The CI run draws a few hundred mutants; `pytest --runslow -k fuzz_10k` draws 10,000 (stage counts, error codes
and where each kind of mutation stopped are printed, and written as JSON to the file named by $NNSPEC_FUZZ_REPORT
when set). The mutators and stages are in `tools/fuzz` (imported from the checkout: pyproject's pytest `pythonpath`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

import nnspec
from tools.fuzz import MUTATORS, FuzzRun, Mutant, load_seeds, mutants

ROOT = Path(__file__).parent.parent
SEEDS = load_seeds(ROOT)
CI_EXAMPLES = 300
SLOW_EXAMPLES = 10_000


def test_seeds_are_the_examples_and_all_check() -> None:
    names = {s.name for s in SEEDS}
    assert {"examples/gpt2.yaml", "examples/small/moe.yaml", "tests/golden/ir/tiny.yaml",
            "examples/small/recursive.yaml (std inlined)"} <= names
    assert len(SEEDS) >= 9
    for seed in SEEDS:
        nnspec.check(seed.text)


def _fuzz(tmp_path: Path, capsys: pytest.CaptureFixture[str], n: int, report: str) -> None:
    run = FuzzRun(SEEDS, tmp_path)

    @settings(max_examples=n, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(mutants(SEEDS))
    def prop(mutant: Mutant) -> None:
        run.one(mutant)

    try:
        prop()
    finally:
        summary = run.summary()
        payload = run.to_json()
        (tmp_path / report).write_text(json.dumps(payload, indent=2, sort_keys=True))
        if os.environ.get("NNSPEC_FUZZ_REPORT"):
            Path(os.environ["NNSPEC_FUZZ_REPORT"]).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n"
                                                              + summary + "\n")
        with capsys.disabled():
            print("\n" + summary)
    total = sum(run.counts.values())
    assert total >= n // 2, "Hypothesis ran far fewer examples than asked"
    # the mutants reach every stage, not just the YAML loader: some are checked, generated and run
    reached_check = sum(v for k, v in run.counts.items() if not k.startswith(("load", "schema")))
    assert reached_check > total // 10, run.summary()
    assert run.counts["ok: passed"] > total // 50, run.summary()
    # every level of mutation runs (bytes, YAML, keys, types, ops, expressions, dims, axes, blocks). Which ones
    # the weighted draw reaches in a short run depends on what else the process imported (the builtins a mutator
    # picks from), so a mutator the draw missed gets a few mutants of its own
    for kind in sorted(set(MUTATORS) - set(run.mutators)):
        @settings(max_examples=3, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(mutants(SEEDS, max_mutations=1, only=[kind]))
        def each(mutant: Mutant) -> None:
            run.one(mutant)
        each()
    assert set(run.mutators) == set(MUTATORS), run.summary()


def test_fuzz_ci(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fuzz(tmp_path, capsys, CI_EXAMPLES, "fuzz_ci.json")


@pytest.mark.slow
def test_fuzz_10k(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fuzz(tmp_path, capsys, SLOW_EXAMPLES, "fuzz_10k.json")


def test_run_stage_counts_op_executions_in_closed_form() -> None:
    """The run stage skips models that run too many ops once repeats are unrolled (the work the spec asks for, not
    a hang); the count walks each body once and multiplies."""
    from tools.fuzz.execute import executions
    text = """nnspec: 1
name: nested
dims: {d: 4}
inputs:
  x: float32[B, d]
outputs:
  y: float32[B, d]
blocks:
  f(x): |
    return relu(x)
  g(x): |
    return repeat(COUNT, f, x, shared=true)
body: |
  y = repeat(COUNT, g, x, shared=true)
"""
    # f runs its input and relu (2); g its input, its repeat node and COUNT x f; the body the same over g
    assert executions(nnspec.check(text.replace("COUNT", "3")).model) == 2 + 3 * (2 + 3 * 2)
    assert executions(nnspec.check(text.replace("COUNT", "1000")).model) == 2 + 1000 * (2 + 1000 * 2)
