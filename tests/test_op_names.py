"""One op, one place: outside the op definitions and the backends' op tables, code asks an op's traits
(`with_trait`, `OPS[op].has`, `node.is_impure()`) instead of naming ops.

What is looked for in every module of the package is a hand-kept class of ops: a set, tuple or list of two or
more op names (`frozenset({"layernorm", "rmsnorm"})`, `node.op in ("call", "repeat")`). A class of ops is a trait,
declared on the ops. Naming one op where the code is about that op (`node.op == "param"`, `@emits("linear")`,
`OPS["attention"]`) is not a class and is not flagged; nor is a backend's table keyed by op (a dict). A few
op-specific rewrites legitimately list ops (attention recognition's score chain); those are allowed below, each with
why.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nnspec.compiler.check  # noqa: F401  (registers every op)
from nnspec.compiler.ops import OPS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nnspec"

# where ops are defined, and each backend's one table keyed by op
OP_TABLE_DIRS = ("nnspec/compiler/ops/",)

# (file, the ops listed): a list that is about those ops themselves, not a class of ops, with why
ALLOWED: dict[tuple[str, frozenset[str]], str] = {
    ("nnspec/compiler/passes/attention.py", frozenset({"mul", "div"})):
        "attention recognition: a scale written as `* c` or `/ c` folds into the attention's scale",
    ("nnspec/compiler/passes/attention.py", frozenset({"mul", "div", "add", "sub", "where", "neg", "cast"})):
        "attention recognition: the score-chain steps it walks through when explaining a refusal",
    ("nnspec/compiler/passes/attention.py", frozenset({"dropout", "cast"})):
        "attention recognition: what may stand between a softmax and the value product",
    ("nnspec/compiler/passes/canonicalize.py", frozenset({"mul", "div", "sub"})):
        "algebraic identities: x * 1, x / 1, x - 0",
    ("nnspec/compiler/passes/canonicalize.py", frozenset({"neg", "logical_not"})):
        "algebraic identities: involutions (--x, not not x)",
    ("nnspec/backends/torch/ops/attention.py", frozenset({"cos", "sin"})):
        "not ops: the generated variable names of rotary's cos and sin tables",
    ("nnspec/compiler/cost.py", frozenset({"linear", "einsum"})):
        "the LM head: the product computing the logits (a conv is never one)",
    ("nnspec/compiler/transforms/dtype.py", frozenset({"add", "sub", "mul", "div", "dropout", "rearrange", "select",
                                                      "getitem"})):
        "--dtype's float32 output tail: the steps between the logits' product and an output (see its comment)",
    ("nnspec/compiler/transforms/dtype.py", frozenset({"linear", "einsum"})):
        "--dtype's float32 output tail: the LM head",
    ("nnspec/compiler/transforms/dtype.py", frozenset({"cast", "add"})):
        "--dtype's float32 islands: how one is entered (cast) and the residual stream (add)",
}


def findings(path: Path) -> list[tuple[int, frozenset[str]]]:
    """Each set, tuple or list of two or more op names (and nothing else) in the file, with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[int, frozenset[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Set, ast.Tuple, ast.List)):
            names = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)
                     and e.value in OPS]
            if len(names) >= 2 and len(names) == len(node.elts):
                out.append((node.lineno, frozenset(names)))
    return out


def test_code_asks_traits_instead_of_naming_ops() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel.startswith(OP_TABLE_DIRS):
            continue
        for line, names in findings(path):
            if (rel, names) not in ALLOWED:
                problems.append(f"{rel}:{line}: a hand-kept class of ops: {sorted(names)}")
    assert not problems, ("name classes of ops by their traits (nnspec.compiler.ops.with_trait), or add the list to "
                          "ALLOWED with why it is about those ops:\n" + "\n".join(problems))


def test_the_finder_sees_a_class_of_ops_but_not_one_op(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text('NORMS = frozenset({"layernorm", "rmsnorm"})\n'
                     'def f(node):\n    return node.op == "dropout" or node.op in NORMS\n'
                     'WORDS = ("input", "an unrelated word")\n', encoding="utf-8")
    assert findings(probe) == [(1, frozenset({"layernorm", "rmsnorm"}))]
    probe.write_text('def f(node):\n    return node.op in ("call", "repeat")\n', encoding="utf-8")
    assert findings(probe) == [(2, frozenset({"call", "repeat"}))]


def test_every_allowed_use_still_exists() -> None:
    """An allow-list entry whose use is gone must go too, so the list cannot grow stale."""
    present = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        present.update((rel, names) for _, names in findings(path))
    assert not set(ALLOWED) - present, sorted(set(ALLOWED) - present)
