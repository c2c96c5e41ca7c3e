"""A mutation fuzzer for nnspec: valid seed specs, mutated at every level, pushed through every stage.

It lives outside the installed package (it reads the repository's examples and golden specs) and watches the
stages through `nnspec.pipeline.Pipeline`, whose stages are computed one at a time as they are read.

The property (issue 8): every spec either goes through, or fails with a `SpecError` whose span (and the
span of each note) lies in the spec or in a file it includes. Anything else (an `InternalError`, a
`KeyError`, a `RecursionError`, a torch error while running a spec that checked, a hang) is a bug.

```python
from hypothesis import given
from tools.fuzz import FuzzRun, load_seeds, mutants

run = FuzzRun(load_seeds(repo_root), workdir)

@given(mutants(run.seeds))
def test_fuzz(mutant):
    run.one(mutant)          # raises FuzzFailure on a violation; counts the stage every mutant reached
```

Stages, in order (`STAGES`); a mutant either is refused at one (with a located `SpecError`) or goes on:

- `load`: bytes -> text -> YAML nodes (`decode`, `load_yaml`): size, encoding, tabs, syntax, limits;
- `schema`: the spec layer (`load_source`): keys and value kinds, identifiers, expression syntax, includes;
- `check`: `nnspec.check` (elaboration): names, shapes, dtypes, sizes, constraints, weight maps;
- `codegen`: the generated module of each target (`TARGETS`: torch and triton), as written (-O0) and optimised
  (-O2, `nnspec.compiler.passes`), each compiled by Python;
- `run`: the reference interpreter on small random inputs (integer inputs all 0, a valid index anywhere), its
  outputs compared with their declared shapes and dtypes and its parameter count with check's; then both generated
  modules, given the interpreter's weights, must compute the interpreter's outputs. Large models are not run: the
  parameter bytes and every node's element count are estimated first (`SKIP_PARAM_BYTES`, `SKIP_NUMEL`); big
  seeds are run with their integer dims shrunk (`shrink_dims`, `--set`).

Seeds (`load_seeds`): the examples and golden specs, plus each one that includes the standard library with its
blocks copied in, so mutations reach them. Mutators (`MUTATORS`), by level: bytes (flip, insert, delete,
truncate, duplicate, odd characters), YAML structure (duplicate lines, drop or rename keys, change a value's
kind, nest, alias), expressions (swap operators, near names, delete or duplicate tokens, brackets, huge numbers,
zero divisors, negation), axes (annotations), blocks (signatures; whole blocks swapped, dropped, copied, made
recursive), ops (built-in function swaps, any or elementwise for elementwise), types (dtypes; option values) and
dims (wild values, or another small integer, which often keeps the spec valid so the interpreter and the generated
code run new sizes). Expression mutators pick their place mostly inside the expression-language scalars
(`expression_regions`), and are drawn more often (`WEIGHTS`).

`FuzzRun.summary()` reports, per stage, how many mutants it refused (located `SpecError`s, by code) and how many
went past it, and per kind of mutation where the mutants that had it stopped.

Issue 22's classes have mutators of their own (`tools/fuzz/hostile.py`, `hostile.*`): nested repeats of a
parameter-free block, adjacent weight-map placeholders, outer products of many-term sizes, huge integers, ops given
too many operands, and spec names that shadow the Triton target's generated names. The Triton module runs its torch
fallbacks in the run stage (kernels in Triton's CPU interpreter would take seconds a mutant).

A timeout (`TIMEOUT_S`, SIGALRM, repeated until it lands) bounds each mutant: a mutant past it is a hang. Long runs:
`python -m tools.fuzz.campaign --examples 250 --seed N --out chunk.json` records every failure and goes on;
`--merge chunk*.json` prints the stage table.
"""

from tools.fuzz.execute import free_sizes, make_inputs, shrink_dims
from tools.fuzz.seeds import Mutant, Seed, load_seeds
from tools.fuzz.stages import STAGES, FuzzFailure, FuzzRun
from tools.fuzz.structure import MUTATORS, mutants
from tools.fuzz.text import expression_regions

__all__ = ["MUTATORS", "STAGES", "FuzzFailure", "FuzzRun", "Mutant", "Seed", "expression_regions", "free_sizes",
           "load_seeds", "make_inputs", "mutants", "shrink_dims"]
