"""A long fuzz run in chunks: `python -m tools.fuzz.campaign --examples 500 --seed 7 --out chunk7.json`.

Unlike the pytest run (which stops at the first failure and shrinks it), a campaign records every failure and goes
on, so a background run of 10,000 mutants reports how many reached each stage, how many broke the property
(internal errors, raw exceptions, unlocated errors) and how many ran past the per-mutant time bound (hangs).
`--merge a.json b.json ...` adds chunks' counts into one stage table."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent


def run(examples: int, seed: int, out: Path) -> dict[str, Any]:
    # what the first mutant would otherwise import on its clock (torch, triton: tens of seconds on a busy machine)
    import torch  # noqa: F401
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed

    import nnspec.backends.loading
    import nnspec.backends.triton.runtime  # noqa: F401
    from nnspec.backends.torch.interpreter import Interpreter  # noqa: F401
    from nnspec.progress import progress
    from tools.fuzz import FuzzFailure, FuzzRun, Mutant, load_seeds, mutants, stages
    # the per-mutant bound: a hang is a mutant past it. A campaign shares its machine (two chunks at once, other
    # work): 90 s, against the pytest run's 30 s; NNSPEC_FUZZ_TIMEOUT sets another
    stages.TIMEOUT_S = float(os.environ.get("NNSPEC_FUZZ_TIMEOUT", "90"))
    seeds = load_seeds(ROOT)
    failures: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, progress("fuzzing", examples) as advance:
        fuzz = FuzzRun(seeds, Path(tmp))

        @hseed(seed)
        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(mutants(seeds))
        def prop(mutant: Mutant) -> None:
            advance(1)   # a bar on a terminal only
            try:
                fuzz.one(mutant)
            except FuzzFailure as e:
                failures.append(str(e)[:4000])

        prop()
        payload = {**fuzz.to_json(), "failures": failures, "seconds": round(time.monotonic() - started, 1),
                   "seed": seed, "summary": fuzz.summary()}
    out.write_text(json.dumps(payload, indent=1, sort_keys=True))
    return payload


def merge(paths: list[Path]) -> str:
    """One stage table over chunks: mutants, refused and passed per stage, failures, hangs, time."""
    from tools.fuzz.stages import STAGES
    counts: Counter[str] = Counter()
    seconds, failures = 0.0, []
    if not paths:
        return "no chunks"
    for p in paths:
        data = json.loads(p.read_text())
        counts.update(data["counts"])
        seconds += data["seconds"]
        failures += data["failures"]
    order = (*STAGES, "ok")
    refused, passed = Counter[str](), Counter[str]()
    for key, n in counts.items():
        stage, _, how = key.partition(": ")
        if stage not in order:
            continue
        if how == "refused":
            refused[stage] += n
        last = order.index(stage) - (1 if how == "refused" else 0)
        for s in order[:last + 1]:
            passed[s] += n
    total = sum(counts.values()) + len(failures)
    hangs = sum("FuzzTimeout" in f for f in failures)
    internal = sum("InternalError" in f for f in failures)
    lines = [f"{total} mutants in {len(paths)} chunks, {seconds:.0f} s of run time ({total / max(seconds, 1):.2f}/s)",
             f"{'stage':8} {'reached':>8} {'refused':>8} {'passed':>8}"]
    reached = total - len(failures)
    for s in STAGES:
        lines.append(f"{s:8} {reached:8} {refused[s]:8} {passed[s]:8}")
        reached = passed[s]
    lines.append(f"failures {len(failures)} (internal errors {internal}, hangs {hangs})")
    return "\n".join(lines + [f.splitlines()[0] for f in failures[:20]])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--merge", type=Path, nargs="*")
    args = parser.parse_args()
    if args.merge:
        print(merge(args.merge))
        return
    payload = run(args.examples, args.seed, args.out)
    print(payload["summary"])
    print(f"failures: {len(payload['failures'])}, {payload['seconds']} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
