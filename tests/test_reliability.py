"""Issue 22: hostile specs within the documented limits must not hang or crash. Each case is a minimal hostile
input written for the test; the expected outcome is a located error (exit 1), a usage error (exit 2) or a correct
answer, never exit 3, a traceback or a hang. No test measures time: where "not proportional to the unrolled model"
matters, the work is counted, or made impossible (a function that must not run raises)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import sympy
from typer.testing import CliRunner

import nnspec
from nnspec.cli import app
from nnspec.compiler import analysis
from nnspec.compiler.elaborate.guards import GuardList, add_guard
from nnspec.compiler.elaborate.limits import MAX_BLOCK_MODULES, MAX_REQUIREMENTS
from nnspec.compiler.ir import Guard
from nnspec.compiler.sizes import MAX_EXPANDED_TERMS, Sizes, expanded_terms, symbol
from nnspec.errors import SpecError
from nnspec.spec.load import MAX_INCLUDE_BYTES

HEAD = """nnspec: 1
name: m
dims:
  d: 4
inputs:
  x: float32[B, d]
outputs:
  y: float32[B, d]
"""


def cli(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def refused(text: str, code: str, line: int | None = None) -> SpecError:
    with pytest.raises(SpecError) as info:
        nnspec.check(text)
    err = info.value
    assert err.code == code, err.render()
    assert err.span is not None
    if line is not None:
        assert err.span.line == line, err.render()
    return err


# ---- 1: nested repeats of a parameter-free block ----
NESTED = HEAD + """blocks:
  f(x): |
    return relu(x)
  g(x): |
    return repeat(COUNT, f, x)
body: |
  y = repeat(COUNT, g, x)
"""


def test_nested_repeats_without_parameters_are_refused_by_counting_block_instances(tmp_path: Path) -> None:
    err = refused(NESTED.replace("COUNT", "100000"), "E005", line=15)
    assert "block instances" in err.message and "10,000,100,000" in err.message
    path = tmp_path / "nested.yaml"
    path.write_text(NESTED.replace("COUNT", "100000"))
    result = cli("check", path)           # compile, build and render check first: the same error
    assert result.exit_code == 1, result.output
    assert "E005" in result.output
    # just inside the bound: 400 x 400 iterations is 160,400 instances. Checking stays proportional to the spec;
    # building makes the 160,400 modules asked for (tens of seconds), which the fuzzer's run stage skips by count
    assert MAX_BLOCK_MODULES >= 400 * 401
    nnspec.check(NESTED.replace("COUNT", "400"))


def test_shared_nested_repeats_walk_each_body_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shared repeats build one module each, so 10^10 iterations pass every limit: the analyses (parameters,
    FLOPs) must walk each block once and multiply."""
    text = NESTED.replace("COUNT, f, x)", "COUNT, f, x, shared=true)")
    text = text.replace("COUNT, g, x)", "COUNT, g, x, shared=true)")
    visits = []
    collect = analysis.Analysis._collect

    def counted(self: Any, graph: Any, prefix: str, out: list[Any]) -> None:
        visits.append(graph.name)
        collect(self, graph, prefix, out)

    monkeypatch.setattr(analysis.Analysis, "_collect", counted)
    result = nnspec.check(text.replace("COUNT", "100000"))
    assert len(visits) <= 3
    assert result.params == 0
    # relu costs one FLOP an element: B * d per iteration, 10^10 iterations
    assert sympy.simplify(result.flops - 10**10 * 4 * symbol("B")) == 0


# ---- 2 and 9: weight-map rules ----
RULES = HEAD + """body: |
  y = linear(x, d, name=fc)
weights:
  hf:
    "fc.weight": "fc.weight"
    "fc.bias": "fc.bias"
    "RULE": "THEIRS | optional"
"""


@pytest.mark.parametrize("rule, theirs, says", [
    ("fc.{i}{j}", "a.{i}.{j}", "separated"),                        # adjacent placeholders: backtracking
    ("fc." + "{a}" * 14, "x", "separated"),
    ("fc.{i}0{j}", "a.{i}.{j}", "separated"),                       # only digits between: the same
    ("fc.{i}{i}", "a.{i}", "separated"),                            # re.error: a group named twice
    ("fc.{i}.{i}", "a.{i}", "twice"),
    ("{0}", "a.{0}", "letters"),                                    # re.error: a group named 0
    ("{fc.weight", "x", "placeholder"),                             # a brace that is no placeholder
    ("fc}.weight", "x", "placeholder"),
])
def test_malformed_or_backtracking_rule_keys_are_located_errors(rule: str, theirs: str, says: str) -> None:
    err = refused(RULES.replace("RULE", rule).replace("THEIRS", theirs), "E027", line=15)
    assert says in err.message


def test_rules_with_separated_placeholders_still_match_long_digit_runs() -> None:
    from nnspec.compiler.weight_map import rule_pattern
    rule = ".".join(f"{{p{i}}}" for i in range(28))
    path = ".".join("1" * 56 for _ in range(28))
    m = rule_pattern(rule).match(path)
    assert m is not None and m.group("p27") == "1" * 56
    assert rule_pattern(rule).match(path + "x") is None
    with pytest.raises(ValueError, match="separated"):
        rule_pattern("{a}{b}")


def test_load_weights_refuses_a_hand_edited_backtracking_rule() -> None:
    torch = pytest.importorskip("torch")
    from nnspec.backends.torch.weights import WeightError, load_weights
    module = nnspec.build(RULES.replace('    "RULE": "THEIRS | optional"\n', ""))
    module.weight_maps = {"hf": [("{a}{b}", "x.{a}.{b}", ())]}
    with pytest.raises(WeightError, match="separated"):
        load_weights(module, {"x.1.2": torch.zeros(1)})


# ---- 3: FLOP polynomials that would expand to ~10^6 terms ----
def outer_product(axes: int, parts: int = 8) -> str:
    ins = "".join(f"  x{i}: float32[n{i}]\n" for i in range(parts))
    over = ", ".join(f"n{i}" for i in range(parts))
    xs = ", ".join(f"x{i}" for i in range(parts))
    names = ", ".join(f"S{a}" for a in range(axes))
    body = "".join(f"  a{a} = concat({xs}, over=({over}), into=S{a})\n" for a in range(axes))
    body += f"  y[{names}] = " + " * ".join(f"a{a}" for a in range(axes)) + "\n"
    return f"nnspec: 1\nname: poly\ninputs:\n{ins}outputs:\n  y: float32[{names}]\nbody: |\n{body}"


def test_flops_of_an_outer_product_of_sums_stay_factored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = sympy.expand

    def bounded(expr: Any, *args: Any, **kwargs: Any) -> Any:
        assert expanded_terms(expr) <= MAX_EXPANDED_TERMS, "a polynomial past the bound was expanded"
        return real(expr, *args, **kwargs)

    monkeypatch.setattr(sympy, "expand", bounded)
    result = nnspec.check(outer_product(20))
    # by hand: the chain a0*a1*...*a19 multiplies once per element of each partial product, s^2 + ... + s^20
    # elements with s = n0 + ... + n7; at every n = 1, s = 8
    value = result.flops.xreplace({s: 1 for s in result.flops.free_symbols})
    assert value == sum(8 ** k for k in range(2, 21))
    path = tmp_path / "poly.yaml"
    path.write_text(outer_product(20))
    out = cli("check", path)
    assert out.exit_code == 0, out.output
    assert "(n0 + n1 + n2 + n3 + n4 + n5 + n6 + n7)^20" in out.output.replace("\n", "").replace("│", "") \
        or "^20" in out.output


def test_small_polynomials_are_still_expanded() -> None:
    n = sympy.Symbol("n")
    assert expanded_terms((n + 1) ** 3) == 4
    assert expanded_terms(sum(sympy.symbols("a:8")) ** 20) > MAX_EXPANDED_TERMS
    assert math.comb(27, 7) == 888_030     # the count: monomials of degree 20 in 8 variables


# ---- 4: guard de-duplication ----
def test_guards_are_deduplicated_by_canonical_form_without_rescanning(monkeypatch: pytest.MonkeyPatch) -> None:
    from nnspec.compiler.elaborate import guards as guards_module
    sizes = Sizes()
    T, N = symbol("T"), symbol("N")
    kept = GuardList()
    calls = []
    canonical = guards_module._canonical

    def counted(fact: Any) -> Any:
        calls.append(fact)
        return canonical(fact)

    monkeypatch.setattr(guards_module, "_canonical", counted)
    for i in range(300):
        add_guard(kept, sizes, Guard(sympy.Le(T + i, 100000), f"T + {i} <= 100000", None))
    add_guard(kept, sizes, Guard(sympy.Eq(T, N), "T == N", None))
    add_guard(kept, sizes, Guard(sympy.Eq(N, T), "N == T", None))      # the same check
    add_guard(kept, sizes, Guard(sympy.Le(T + 5, 100000), "again", None))
    assert len(kept) == 301
    assert len(calls) == 303               # one canonical form per guard offered, not one per kept guard


def test_too_many_requirements_are_refused() -> None:
    reqs = "".join(f"  - B + {i} <= 100000\n" for i in range(MAX_REQUIREMENTS + 1))
    text = HEAD + "require:\n" + reqs + "body: |\n  y = relu(x)\n"
    refused(text, "E005", line=9 + MAX_REQUIREMENTS + 1)


# ---- 5: the included files' aggregate size ----
def test_includes_have_an_aggregate_byte_budget(tmp_path: Path) -> None:
    filler = "# " + "x" * 1000 + "\n"
    lib = "nnspec: 1\nblocks:\n  BLOCK(x): |\n    return relu(x)\n"
    per_file = MAX_INCLUDE_BYTES // 3
    for i in range(4):
        (tmp_path / f"lib{i}.yaml").write_text(lib.replace("BLOCK", f"b{i}") + filler * (per_file // len(filler)))
    includes = "include: [lib0.yaml, lib1.yaml, lib2.yaml, lib3.yaml]\n"
    spec = tmp_path / "m.yaml"
    spec.write_text(HEAD + includes + "body: |\n  y = b0(x)\n")
    with pytest.raises(SpecError) as info:
        nnspec.check(spec)
    assert info.value.code == "E005" and "together" in info.value.message
    assert info.value.span is not None and info.value.span.line == 9
    spec.write_text(HEAD + "include: [lib0.yaml, lib1.yaml]\nbody: |\n  y = b1(x)\n")
    nnspec.check(spec)                         # two thirds of the budget: accepted
