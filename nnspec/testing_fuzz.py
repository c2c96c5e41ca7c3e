"""A mutation fuzzer for nnspec: valid seed specs, mutated at every level, pushed through every stage.

The property (issue 8): every spec either goes through, or fails with a `SpecError` whose span (and the
span of each note) lies in the spec or in a file it includes. Anything else (an `InternalError`, a
`KeyError`, a `RecursionError`, a torch error while running a spec that checked, a hang) is a bug.

```python
from hypothesis import given
from nnspec.testing_fuzz import FuzzRun, load_seeds, mutants

run = FuzzRun(load_seeds(repo_root), workdir)

@given(mutants(run.seeds))
def test_fuzz(mutant):
    run.one(mutant)          # raises FuzzFailure on a violation; counts the stage every mutant reached
```

Stages, in order (`STAGES`); a mutant either is refused at one (with a located `SpecError`) or goes on:

- `load`: bytes -> text -> YAML nodes (`decode`, `load_yaml`): size, encoding, tabs, syntax, limits;
- `schema`: the spec layer (`load_source`): keys and value kinds, identifiers, expression syntax, includes;
- `check`: `nnspec.check` (elaboration): names, shapes, dtypes, sizes, constraints, weight maps;
- `codegen`: the generated PyTorch module (`nnspec.backends.torch.codegen`), as written (-O0) and optimised
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

Only a timeout (`TIMEOUT_S`, SIGALRM) guards against hangs; there is no other time check.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import os
import re
import signal
import string
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from hypothesis import strategies as st

from nnspec.errors import SpecError

STAGES = ("load", "schema", "check", "codegen", "run")
TIMEOUT_S = 30                  # one mutant, all stages; a hang is a failure
SKIP_PARAM_BYTES = 32 << 20     # run only models whose parameters fit in 32 MiB ...
SKIP_NUMEL = 1 << 20            # ... and whose largest tensor has at most 1M elements
GENERATED_OPT_LEVELS = (0, 2)  # the generated module as written and optimised: each is run against the interpreter
RTOL, ATOL = 1e-4, 1e-5       # the same math in another order (einsum vs matmul, fused attention)
MAX_TEXT = 64 << 10             # mutants never grow past 64 KiB (the loader's own limit is tested elsewhere)

SEED_GLOBS = ("examples/*.yaml", "examples/small/*.yaml", "tests/golden/ir/*.yaml")


class FuzzFailure(AssertionError):
    """A mutant broke the property. The message holds the mutations, the text and the trace."""


class FuzzTimeout(BaseException):
    pass


# ---- seeds ---------------------------------------------------------------------------------------------

@dataclass(repr=False)
class Seed:
    name: str
    text: str
    small: dict[str, int] | None = None  # `--set` overrides that make the model small enough to run
    small_done: bool = False

    def __repr__(self) -> str:
        return f"Seed({self.name!r})"


def load_seeds(root: str | os.PathLike[str]) -> list[Seed]:
    """The example specs, and each one that includes the standard library once more with those blocks written
    into it (`... (std inlined)`), so that mutations reach the library's blocks too."""
    root = Path(root)
    paths = sorted({p for g in SEED_GLOBS for p in root.glob(g)})
    seeds = [Seed(p.relative_to(root).as_posix(), p.read_text(encoding="utf-8")) for p in paths]
    return seeds + [Seed(f"{s.name} (std inlined)", text) for s in seeds if (text := inline_std(s.text))]


def inline_std(text: str) -> str | None:
    """`text` with its `include: [std/...]` files' blocks copied into its `blocks:`; None if it includes none."""
    from nnspec.spec.load import STDLIB
    value = yaml.safe_load(text)
    includes = value.get("include") or []
    if not includes or not all(isinstance(i, str) and i.startswith("std/") for i in includes):
        return None
    blocks: dict[str, Any] = {}
    for ref in includes:
        blocks.update(yaml.safe_load((STDLIB / ref[4:]).read_text(encoding="utf-8")).get("blocks") or {})
    blocks.update(value.get("blocks") or {})
    out = {k: v for k, v in value.items() if k != "include"}
    out["blocks"] = blocks
    return _dump(out).decode()


class Mutant:
    """A seed's bytes after some mutations (a plain class, so Hypothesis prints it with `__repr__`)."""

    __slots__ = ("data", "mutations", "seed")

    def __init__(self, seed: Seed, data: bytes, mutations: tuple[str, ...]) -> None:
        self.seed, self.data, self.mutations = seed, data, mutations

    def __repr__(self) -> str:
        return f"Mutant({self.seed.name!r}, {list(self.mutations)!r})"

    def diff(self, limit: int = 40) -> str:
        """The mutant against its seed, as a unified diff (at most `limit` lines)."""
        new = self.data.decode("utf-8", "backslashreplace").splitlines()
        lines = list(difflib.unified_diff(self.seed.text.splitlines(), new, self.seed.name, "mutant", lineterm="",
                                          n=1))
        return "\n".join(lines[:limit] + ([f"... {len(lines) - limit} more lines"] if len(lines) > limit else []))


# ---- mutators ------------------------------------------------------------------------------------------
# Each takes Hypothesis's `draw` and the current bytes, and returns new bytes and a description.

Draw = Callable[[st.SearchStrategy[Any]], Any]

INTERESTING_BYTES = [b"\x00", b"\xff", b"\xc3", b"\t", b"\n", b"\r", b"\r\n", b":", b": ", b"- ", b"[", b"]",
                     b"{", b"}", b"&a ", b"*a", b"!", b"!!python/object:os.system ", b"|", b">", b"#", b'"',
                     b"'", b"%", b"@", b"`", b"\\", b",", b"?", b"<<: ", b"---\n", b"...\n", b"~", b" ", b"  "]
ODD_CHARS = ["\u0430", "\u0435", "\u200b", "\u2028", "\u2029", "\x85", "\ufeff", "\u00a0", "\u202e", "\U0001f600",
             "\u0301", "\u212a", "\uff41", "\x7f", "\x1b", "\x0c", "\x0b"]
INTERESTING_NUMBERS = ["0", "-1", "1", "2", "3", "-0", "0.5", "1.5", "1e400", "1e-400", "10**30", "10**12", "2**40",
                       "2**41", "2**62", "2**63", "2**64", "-(2**63)", "99999999999999999999999999", "10**100",
                       "2**-1", "0**0", "1/0", "1//0", "1%0", "0.0", "1e308*10", "10.0**400", "inf", "-inf",
                       "inf-inf", "(-8)**0.5", "sqrt(-1)", "log(0)", "exp(1000)", "max(1)", "min()", "4.0",
                       "3*0", "1000000000000"]
OPERATORS = ["+", "-", "*", "/", "//", "%", "**", "@", "==", "!=", "<", "<=", ">", ">=", "=", "+=", "-=",
             "*=", " and ", " or ", " if ", " else ", " not ", ",", "."]
NAMES = ["x", "h", "B", "T", "S", "d", "__import__", "__class__", "__init__", "os", "sys", "self", "torch", "nn",
         "F", "forward", "super", "eval", "exec", "lambda", "def", "class", "import", "None", "True", "return",
         "if", "else", "and", "not", "true", "false", "inf", "nan", "pi", "name", "over", "weight", "bias", "_",
         "__", "a" * 300, "\u0430", "x\u200b", "T_", "B1"]
KEYS = ["nnspec", "name", "doc", "dims", "options", "require", "inputs", "outputs", "blocks", "body", "include",
        "hf_config", "weights", "default", "choices", "hf", "key", "values", "ignore", "type", "<<", "?",
        "1", "true", "null", "", " ", "name ", "Name", "bodyy", "blocks.x"]
SCALARS: list[Any] = [0, 1, -1, 2 ** 40, 2 ** 41, 10 ** 12, 10 ** 30, 1.5, -0.0, float("inf"), float("nan"), True,
                      False, None, "", "x", "1/0", "d", "float32[B, d]", "int64[]", "y = x", "return x", [], {},
                      ["a"], {"a": 1}, "\u0430", "a\nb", "10**12", "-3", "std/transformer.yaml", "../x.yaml"]
TOKEN = re.compile(r"(?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|(?P<name>[A-Za-z_]\w*)|"
                   r"(?P<op>\*\*|//|==|!=|<=|>=|\+=|-=|\*=|[-+*/%@<>=])|(?P<br>[()\[\]{}])|(?P<punct>[,.:|])")
AXES = re.compile(r"\[([^\[\]\n]*)\]")
SIGNATURE = re.compile(r"(?m)^(?P<indent>[ ]+)(?P<name>[A-Za-z_]\w*)\((?P<params>[^\n]*)\)(?P<rest>:[ ]*[|>]?)")


def _pos(draw: Draw, n: int) -> int:
    return draw(st.integers(0, max(0, n)))


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def m_flip(draw: Draw, data: bytes) -> tuple[bytes, str]:
    if not data:
        return b"\x00", "flip (empty)"
    i = _pos(draw, len(data) - 1)
    bit = draw(st.integers(0, 7))
    return data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1:], f"flip bit {bit} of byte {i}"


def m_insert_bytes(draw: Draw, data: bytes) -> tuple[bytes, str]:
    i = _pos(draw, len(data))
    ins = draw(st.sampled_from(INTERESTING_BYTES) | st.binary(min_size=1, max_size=4))
    return data[:i] + ins + data[i:], f"insert {ins!r} at {i}"


def m_odd_char(draw: Draw, data: bytes) -> tuple[bytes, str]:
    i = _pos(draw, len(data))
    while i > 0 and (data[i - 1] & 0xC0) == 0x80:   # keep multi-byte characters whole
        i -= 1
    ch = draw(st.sampled_from(ODD_CHARS)).encode()
    return data[:i] + ch + data[i:], f"insert {ch!r} at {i}"


def m_delete(draw: Draw, data: bytes) -> tuple[bytes, str]:
    i = _pos(draw, len(data))
    n = draw(st.integers(1, 40))
    return data[:i] + data[i + n:], f"delete {n} bytes at {i}"


def m_truncate(draw: Draw, data: bytes) -> tuple[bytes, str]:
    i = _pos(draw, len(data))
    return data[:i], f"truncate at {i}"


def m_duplicate(draw: Draw, data: bytes) -> tuple[bytes, str]:
    i = _pos(draw, len(data))
    n = draw(st.integers(1, 200))
    times = draw(st.integers(1, 4))
    return (data[:i] + data[i:i + n] * (times + 1) + data[i + n:])[:MAX_TEXT], f"repeat {n} bytes at {i} x{times}"


def m_duplicate_line(draw: Draw, data: bytes) -> tuple[bytes, str]:
    lines = data.split(b"\n")
    i = _pos(draw, len(lines) - 1)
    j = _pos(draw, len(lines))
    lines.insert(j, lines[i])
    return b"\n".join(lines), f"copy line {i + 1} to {j + 1}"


def _tokens(text: str, group: str | None = None, draw: Draw | None = None) -> list[re.Match[str]]:
    """Tokens of `text` (of one kind). With `draw`, mostly those inside expressions (body, blocks, dims, types,
    require), where a mutation reaches the checker rather than the schema; sometimes any, keys included."""
    toks = [m for m in TOKEN.finditer(text) if group is None or m.lastgroup == group]
    if draw is None or draw(st.integers(0, 4)) == 0:
        return toks
    regions = expression_regions(text)
    inside = [m for m in toks if any(a <= m.start() < b for a, b in regions)]
    return inside or toks


@functools.lru_cache(maxsize=64)
def expression_regions(text: str) -> tuple[tuple[int, int], ...]:
    """(start, end) character offsets in `text` of the scalars holding expression-language text."""
    from nnspec.spec.source import Source
    from nnspec.spec.yaml_loader import YNode, load_yaml
    shift = 1 if text.startswith("\ufeff") else 0
    try:
        root = load_yaml(Source("<fuzz>", text[shift:]))
    except (SpecError, RecursionError):
        return ()
    if not isinstance(root.value, dict):
        return ()
    out: list[tuple[int, int]] = []

    def add(node: YNode) -> None:
        if node.text is not None and isinstance(node.value, str) and node.value:
            offsets = node.text._offsets
            out.append((offsets[0] + shift, offsets[-1] + shift))
    top = root.value
    for key in ("body", "name"):
        if key in top:
            add(top[key])
    for key in ("dims", "blocks", "inputs", "outputs", "options"):
        node = top.get(key)
        if node is not None and isinstance(node.value, dict):
            for k, v in node.value.items():
                add(v)
                if key == "blocks":  # the signature is the key
                    span = node.key_spans[k]
                    start = root.span.source.offset(span.line, span.col)
                    out.append((start + shift, start + len(k) + shift))
                elif isinstance(v.value, dict) and "type" in v.value:
                    add(v.value["type"])
    node = top.get("require")
    if node is not None and isinstance(node.value, list):
        for v in node.value:
            add(v)
    return tuple(out)


def _replace(text: str, start: int, end: int, new: str) -> str:
    return text[:start] + new + text[end:]


def m_swap_operator(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = _text(data)
    toks = _tokens(text, "op", draw)
    if not toks:
        return m_insert_bytes(draw, data)
    m = draw(st.sampled_from(toks))
    arithmetic = ["+", "-", "*", "/", "//", "%", "**", "@"]
    # mostly another arithmetic operator, so the expression still parses and the checker sees it
    pool = arithmetic if m.group() in arithmetic and draw(st.integers(0, 3)) else OPERATORS
    new = draw(st.sampled_from(pool))
    return _bytes(_replace(text, m.start(), m.end(), new)), f"operator {m.group()!r} at {m.start()} -> {new!r}"


def _near(draw: Draw, name: str) -> str:
    if not name:
        return "x"
    i = _pos(draw, len(name) - 1)
    how = draw(st.sampled_from(["drop", "double", "swap", "case", "letter", "suffix"]))
    if how == "drop":
        return name[:i] + name[i + 1:] or "_"
    if how == "double":
        return name[:i] + name[i] + name[i:]
    if how == "swap" and i + 1 < len(name):
        return name[:i] + name[i + 1] + name[i] + name[i + 2:]
    if how == "case":
        return name.swapcase()
    if how == "letter":
        return name[:i] + draw(st.sampled_from(string.ascii_letters + "_0")) + name[i + 1:]
    return name + draw(st.sampled_from(["s", "_", "1", "_2"]))


def m_rename(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = _text(data)
    toks = _tokens(text, "name", draw)
    if not toks:
        return m_insert_bytes(draw, data)
    m = draw(st.sampled_from(toks))
    others = sorted({t.group() for t in toks})
    how = draw(st.sampled_from(["near", "other", "builtin", "special", "everywhere"]))
    if how == "near":
        new = _near(draw, m.group())
    elif how == "other":
        new = draw(st.sampled_from(others))
    elif how == "builtin":
        new = draw(st.sampled_from(_builtins()))
    else:
        new = draw(st.sampled_from(NAMES))
    if how == "everywhere":   # a consistent rename, so the spec may stay valid with an odd name
        out = re.sub(rf"\b{re.escape(m.group())}\b", new, text)
        return _bytes(out), f"rename {m.group()!r} -> {new!r} everywhere"
    return _bytes(_replace(text, m.start(), m.end(), new)), f"name {m.group()!r} at {m.start()} -> {new!r}"


def m_delete_token(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = _text(data)
    toks = _tokens(text, None, draw)
    if not toks:
        return m_delete(draw, data)
    m = draw(st.sampled_from(toks))
    return _bytes(_replace(text, m.start(), m.end(), "")), f"delete token {m.group()!r} at {m.start()}"


def m_duplicate_token(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = _text(data)
    toks = _tokens(text, None, draw)
    if not toks:
        return m_duplicate(draw, data)
    m = draw(st.sampled_from(toks))
    sep = draw(st.sampled_from(["", " ", ", "]))
    return _bytes(_replace(text, m.start(), m.end(), m.group() + sep + m.group())), \
        f"duplicate token {m.group()!r} at {m.start()}"


def m_brackets(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = _text(data)
    toks = _tokens(text, None, draw)
    if not toks:
        return m_insert_bytes(draw, data)
    a = draw(st.sampled_from(toks))
    how = draw(st.sampled_from(["wrap", "open", "close", "deep", "annotate", "call"]))
    if how == "wrap":
        b = draw(st.sampled_from([t for t in toks if t.start() >= a.start()]))
        new = text[:a.start()] + "(" + text[a.start():b.end()] + ")" + text[b.end():]
    elif how == "open":
        new = _replace(text, a.start(), a.start(), draw(st.sampled_from(["(", "[", "{"])))
    elif how == "close":
        new = _replace(text, a.end(), a.end(), draw(st.sampled_from([")", "]", "}"])))
    elif how == "deep":
        n = draw(st.sampled_from([3, 50, 199, 201, 300, 1000]))
        new = text[:a.start()] + "(" * n + a.group() + ")" * n + text[a.end():]
    elif how == "annotate":
        new = _replace(text, a.end(), a.end(), draw(st.sampled_from(["[B, T]", "[]", "[B, T, d]", "[(B T)]",
                                                                        "[x]", "[1]", "[0]", "[-1]"])))
    else:
        new = _replace(text, a.end(), a.end(), draw(st.sampled_from(["()", "(x)", "(x, x)", "(name=x)",
                                                                        "(over=T)", "(1, 2, 3, 4, 5, 6, 7)"])))
    return _bytes(new), f"brackets {how} at {a.start()}"


def m_number(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = _text(data)
    toks = _tokens(text, "num", draw) or _tokens(text, "name", draw)
    if not toks:
        return m_insert_bytes(draw, data)
    m = draw(st.sampled_from(toks))
    new = draw(st.sampled_from(INTERESTING_NUMBERS))
    return _bytes(_replace(text, m.start(), m.end(), new)), f"number {m.group()!r} at {m.start()} -> {new!r}"


def m_divisor(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = _text(data)
    toks = [t for t in _tokens(text, None, draw) if t.lastgroup in ("num", "name")] or _tokens(text, None, draw)
    if not toks:
        return m_insert_bytes(draw, data)
    m = draw(st.sampled_from(toks))
    new = draw(st.sampled_from([" / 0", " // 0", " % 0", " / (1 - 1)", " / 0.0", " ** -1", " - " + m.group(),
                                " * -1", " * 0", " - 10**12", " * 10**12"]))
    return _bytes(_replace(text, m.end(), m.end(), new)), f"append {new!r} to {m.group()!r} at {m.start()}"


def m_negate(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = _text(data)
    toks = [t for t in _tokens(text, None, draw) if t.lastgroup in ("num", "name")]
    if not toks:
        return m_insert_bytes(draw, data)
    m = draw(st.sampled_from(toks))
    new = draw(st.sampled_from(["-", "-(", "0 - ", "not "]))
    out = _replace(text, m.start(), m.start(), new) + (")" if new == "-(" else "")
    if new == "-(":
        out = _replace(text, m.start(), m.end(), f"-({m.group()})")
    return _bytes(out), f"negate {m.group()!r} at {m.start()}"


def m_axes(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = _text(data)
    spans = list(AXES.finditer(text))
    if not spans:
        return m_brackets(draw, data)
    m = draw(st.sampled_from(spans))
    items = [s.strip() for s in m.group(1).split(",")] if m.group(1).strip() else []
    how = draw(st.sampled_from(["drop", "dup", "swap", "group", "ungroup", "int", "name", "rename", "empty"]))
    if how == "drop" and items:
        del items[_pos(draw, len(items) - 1)]
    elif how == "dup" and items:
        i = _pos(draw, len(items) - 1)
        items.insert(i, items[i])
    elif how == "swap" and len(items) > 1:
        i = _pos(draw, len(items) - 2)
        items[i], items[i + 1] = items[i + 1], items[i]
    elif how == "group" and len(items) > 1:
        i = _pos(draw, len(items) - 2)
        items[i:i + 2] = [f"({items[i]} {items[i + 1]})"]
    elif how == "ungroup":
        items = [s.strip("()") for s in items]
    elif how == "int":
        items.insert(_pos(draw, len(items)), draw(st.sampled_from(["1", "0", "2", "3", "1000000000000", "007"])))
    elif how == "name":
        items.insert(_pos(draw, len(items)), draw(st.sampled_from(["B", "T", "S", "zz", "d", "(zz d)", "(2 zz)"])))
    elif how == "rename" and items:
        i = _pos(draw, len(items) - 1)
        items[i] = _near(draw, items[i])
    elif how == "empty":
        items = []
    new = "[" + ", ".join(items) + "]"
    return _bytes(_replace(text, m.start(), m.end(), new)), f"axes {m.group()!r} at {m.start()} -> {new!r}"


def m_signature(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = _text(data)
    sigs = list(SIGNATURE.finditer(text))
    if not sigs:
        return m_rename(draw, data)
    m = draw(st.sampled_from(sigs))
    params = [p.strip() for p in re.split(r",(?![^\[]*\])", m.group("params")) if p.strip()]
    name = m.group("name")
    how = draw(st.sampled_from(["drop", "add", "default", "annotate", "dup", "rename_block", "rename_param",
                                "reorder", "dunder"]))
    if how == "drop" and params:
        del params[_pos(draw, len(params) - 1)]
    elif how == "add":
        params.insert(_pos(draw, len(params)), draw(st.sampled_from(["extra", "n=2", "x", "d", "name", "w=0"])))
    elif how == "default" and params:
        i = _pos(draw, len(params) - 1)
        params[i] = params[i].split("=")[0] + "=" + draw(st.sampled_from(["2", "0", "-1", "x", "10**12", "1/0",
                                                                             "true", '"s"']))
    elif how == "annotate" and params:
        i = _pos(draw, len(params) - 1)
        params[i] = re.sub(r"\[.*\]", "", params[i].split("=")[0]) + draw(st.sampled_from(
            ["[B, T, d]", "[B]", "[]", "[(B T)]", "[B, B]", "[1, 2]"]))
    elif how == "dup" and params:
        params.append(params[0])
    elif how == "rename_block":
        name = draw(st.sampled_from([_near(draw, name), *_builtins(), "forward", "__init__", "class", "Model"]))
    elif how == "rename_param" and params:
        i = _pos(draw, len(params) - 1)
        params[i] = draw(st.sampled_from(NAMES)) + params[i][len(re.match(r"\w*", params[i]).group()):]  # type: ignore[union-attr]
    elif how == "reorder" and len(params) > 1:
        params.reverse()
    elif how == "dunder":
        name = "__" + name + "__"
    new = f"{m.group('indent')}{name}({', '.join(params)}){m.group('rest')}"
    return _bytes(_replace(text, m.start(), m.end(), new)), f"signature {m.group().strip()!r} -> {new.strip()!r}"


def _builtins() -> list[str]:
    import nnspec.compiler.builtins  # noqa: F401
    from nnspec.compiler.ops import BUILTINS
    return sorted(BUILTINS)


def m_swap_builtin(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = _text(data)
    known = set(_builtins())
    calls = [m for m in re.finditer(r"\b([A-Za-z_]\w*)\(", text) if m.group(1) in known]
    if not calls:
        return m_rename(draw, data)
    m = draw(st.sampled_from(calls))
    new = draw(st.sampled_from(sorted(known)))
    return _bytes(_replace(text, m.start(1), m.end(1), new)), f"call {m.group(1)} at {m.start()} -> {new}"


# -- structural mutators: on the YAML value, re-dumped --

class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value and value.strip() == value.rstrip("\n").strip() else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_presenter)


def _plain(data: bytes) -> Any:
    """The mutant as plain Python values, read by nnspec's own (limited) loader; None if it does not load."""
    from nnspec.spec.yaml_loader import decode, load_yaml
    try:
        return load_yaml(decode(data, "<fuzz>")).plain()
    except SpecError:
        return None


def _dump(value: Any) -> bytes:
    return yaml.dump(value, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100_000).encode()


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value (not the root) in a plain YAML value."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        value = value[k]
    return value


def _structural(fn: Callable[[Draw, Any], str]) -> Callable[[Draw, bytes], tuple[bytes, str]]:
    def mutator(draw: Draw, data: bytes) -> tuple[bytes, str]:
        value = _plain(data)
        if value is None:
            return m_insert_bytes(draw, data)
        desc = fn(draw, value)
        return _dump(value), desc
    mutator.__name__ = fn.__name__
    return mutator


@_structural
def m_drop_key(draw: Draw, value: Any) -> str:
    paths = list(_paths(value))
    if not paths:
        return "no keys"
    path = draw(st.sampled_from(paths))
    parent = _get(value, path[:-1])
    del parent[path[-1]]
    return f"drop {'.'.join(map(str, path))}"


@_structural
def m_rename_key(draw: Draw, value: Any) -> str:
    paths = [p for p in _paths(value) if isinstance(_get(value, p[:-1]), dict)]
    if not paths:
        return "no keys"
    path = draw(st.sampled_from(paths))
    parent = _get(value, path[:-1])
    old = path[-1]
    new = draw(st.sampled_from([_near(draw, str(old)), *KEYS, *NAMES]))
    items = [(new if k == old else k, v) for k, v in parent.items()]
    parent.clear()
    parent.update(items)
    return f"rename key {'.'.join(map(str, path))} -> {new!r}"


@_structural
def m_change_type(draw: Draw, value: Any) -> str:
    paths = list(_paths(value))
    if not paths:
        return "no values"
    path = draw(st.sampled_from(paths))
    parent = _get(value, path[:-1])
    old = parent[path[-1]]
    how = draw(st.sampled_from(["scalar", "str", "nest_list", "nest_map", "flatten"]))
    if how == "scalar":
        new = draw(st.sampled_from(SCALARS))
    elif how == "str":
        new = str(old)
    elif how == "nest_list":
        new = [old]
    elif how == "nest_map":
        new = {draw(st.sampled_from(KEYS)): old}
    else:
        new = next(iter(old.values())) if isinstance(old, dict) and old else \
            (old[0] if isinstance(old, list) and old else old)
    parent[path[-1]] = new
    return f"{'.'.join(map(str, path))} ({how}) -> {str(new)[:40]!r}"


@_structural
def m_alias(draw: Draw, value: Any) -> str:
    """The same object at two places: the dumper writes an anchor and an alias."""
    paths = list(_paths(value))
    if len(paths) < 2:
        return "no values"
    src = draw(st.sampled_from(paths))
    dst = draw(st.sampled_from(paths))
    try:
        _get(value, dst[:-1])[dst[-1]] = _get(value, src)
    except (KeyError, IndexError, TypeError):
        return "alias (stale path)"
    return f"alias {'.'.join(map(str, dst))} = *{'.'.join(map(str, src))}"


@_structural
def m_dim_value(draw: Draw, value: Any) -> str:
    dims = value.get("dims") if isinstance(value, dict) else None
    if not isinstance(dims, dict) or not dims:
        if isinstance(value, dict):
            value["dims"] = {"zz": draw(st.sampled_from(SCALARS))}
        return "add dims"
    name = draw(st.sampled_from(sorted(map(str, dims))))
    others = sorted(map(str, dims))
    new = draw(st.sampled_from([0, -1, 1, 2 ** 40, 2 ** 41, 10 ** 12, 10 ** 30, 1.5, True, None, "x", "0", "-3",
                                f"{name} / 0", f"{name} // 0", f"{name} * 2", f"{draw(st.sampled_from(others))} + 1",
                                f"{draw(st.sampled_from(others))} / 3", "10**12", "2**40 + 1", "2**62", "1e400",
                                "B", "T * 2", "sqrt(2)", "inf", "-inf", "max(1, 2)", "abs(-4)", "4 / 2.0"]))
    dims[name] = new
    return f"dims.{name} -> {new!r}"


@_structural
def m_option(draw: Draw, value: Any) -> str:
    """An option's value: a flag flipped, another of its choices (often still valid, so the interpreter and the
    generated code run another variant), a value outside its choices, or a number or text instead."""
    options = value.get("options") if isinstance(value, dict) else None
    if not isinstance(options, dict) or not options:
        return "no options"
    name = draw(st.sampled_from(sorted(map(str, options))))
    old = options[name]
    current = old.get("default") if isinstance(old, dict) else old
    choices = old.get("choices") if isinstance(old, dict) and isinstance(old.get("choices"), list) else []
    pool: list[Any] = [*choices, not current if isinstance(current, bool) else True, 0, -1, 1e-3, 2, float("inf"),
                       float("nan"), "relu", "x", ""]
    new = draw(st.sampled_from(pool))
    if isinstance(old, dict):
        old["default"] = new
    else:
        options[name] = new
    return f"option {name}: {current!r} -> {new!r}"


def m_small_dim(draw: Draw, data: bytes) -> tuple[bytes, str]:
    """An integer dim set to another small integer: often still valid, so the interpreter runs new sizes."""
    text = _text(data)
    dims = list(re.finditer(r"(?m)^  ([A-Za-z_]\w*): (\d+)\b", text))
    if not dims:
        return m_number(draw, data)
    m = draw(st.sampled_from(dims))
    new = str(draw(st.sampled_from([1, 2, 3, 4, 5, 6, 8, 12, 16, 32])))
    return _bytes(_replace(text, m.start(2), m.end(2), new)), f"dim {m.group(1)} {m.group(2)} -> {new}"


DTYPES = ["float32", "float16", "bfloat16", "int64", "int32", "bool", "float", "float64", "int8", "complex64"]
DTYPE_WORD = re.compile(r"\b(float32|float16|bfloat16|int64|int32|bool|float)\b")


def m_dtype(draw: Draw, data: bytes) -> tuple[bytes, str]:
    """A dtype in a type (`float32[B, d]`), a cast or a `dtype=` argument swapped for another, or for one nnspec
    does not know."""
    text = _text(data)
    found = list(DTYPE_WORD.finditer(text))
    if not found:
        return m_rename(draw, data)
    m = draw(st.sampled_from(found))
    new = draw(st.sampled_from(DTYPES))
    return _bytes(_replace(text, m.start(), m.end(), new)), f"dtype {m.group()!r} at {m.start()} -> {new!r}"


def _block_name(signature: str) -> str:
    return signature.split("(", 1)[0].strip()


@_structural
def m_block(draw: Draw, value: Any) -> str:
    """Whole blocks: two bodies swapped, a block calling itself (a cycle), one dropped, copied under another name,
    or the model's body replaced by a block's."""
    blocks = value.get("blocks") if isinstance(value, dict) else None
    if not isinstance(blocks, dict) or not blocks or not all(isinstance(b, str) for b in blocks.values()):
        return "no blocks"
    sigs = sorted(blocks, key=str)
    sig = draw(st.sampled_from(sigs))
    how = draw(st.sampled_from(["swap", "recurse", "drop", "copy", "as_body"]))
    if how == "swap" and len(sigs) > 1:
        other = draw(st.sampled_from([s for s in sigs if s != sig]))
        blocks[sig], blocks[other] = blocks[other], blocks[sig]
        return f"swap the bodies of {sig!r} and {other!r}"
    if how == "recurse":
        names = [_block_name(s) for s in sigs]
        body = blocks[sig]
        called = [m for m in re.finditer(r"\b([A-Za-z_]\w*)\(", body) if m.group(1) in names]
        target = draw(st.sampled_from(called)) if called else None
        me = _block_name(sig)
        if target is not None:
            blocks[sig] = body[:target.start(1)] + me + body[target.end(1):]
        else:
            first = re.match(r"[^(]*\(\s*([A-Za-z_]\w*)", sig)
            arg = first.group(1) if first else "x"
            blocks[sig] = f"{arg} = {me}({arg})\n" + body
        return f"block {me!r} calls itself"
    if how == "drop":
        del blocks[sig]
        return f"drop block {sig!r}"
    if how == "copy":
        blocks[sig.replace(_block_name(sig), _block_name(sig) + "_copy", 1)] = blocks[sig]
        return f"copy block {sig!r}"
    value["body"] = blocks[sig]
    return f"body := the body of {sig!r}"


UNARY_CALLS = ["relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "exp", "log", "abs", "sqrt", "rsqrt"]


def m_swap_unary(draw: Draw, data: bytes) -> tuple[bytes, str]:
    """An elementwise function swapped for another (same type rule, so the spec most often still checks)."""
    text = _text(data)
    calls = [m for m in re.finditer(r"\b([A-Za-z_]\w*)\(", text) if m.group(1) in UNARY_CALLS]
    if not calls:
        return m_swap_builtin(draw, data)
    m = draw(st.sampled_from(calls))
    new = draw(st.sampled_from(UNARY_CALLS))
    return _bytes(_replace(text, m.start(1), m.end(1), new)), f"call {m.group(1)} at {m.start()} -> {new}"


MUTATORS: dict[str, Callable[[Draw, bytes], tuple[bytes, str]]] = {
    "bytes.flip": m_flip, "bytes.insert": m_insert_bytes, "bytes.odd_char": m_odd_char, "bytes.delete": m_delete,
    "bytes.truncate": m_truncate, "bytes.duplicate": m_duplicate, "yaml.duplicate_line": m_duplicate_line,
    "yaml.drop_key": m_drop_key, "yaml.rename_key": m_rename_key, "yaml.change_type": m_change_type,
    "yaml.alias": m_alias, "expr.operator": m_swap_operator, "expr.rename": m_rename,
    "expr.delete_token": m_delete_token, "expr.duplicate_token": m_duplicate_token, "expr.brackets": m_brackets,
    "expr.number": m_number, "expr.divisor": m_divisor, "expr.negate": m_negate, "axes": m_axes,
    "blocks.signature": m_signature, "blocks.whole": m_block, "ops.swap": m_swap_builtin, "ops.unary": m_swap_unary,
    "types.dtype": m_dtype, "types.option": m_option, "dims.value": m_dim_value, "dims.small": m_small_dim,
}


# Mutations of the expression language are drawn more often: most byte and YAML mutations stop at the loader or
# the schema, and the checker and the interpreter have the most rules to get wrong.
WEIGHTS = {name: 3 if name.startswith(("expr.", "axes", "ops.")) else
           2 if name.startswith(("blocks.", "dims.", "types.")) else 1 for name in MUTATORS}


def mutants(seeds: list[Seed], max_mutations: int = 3) -> st.SearchStrategy[Mutant]:
    kinds = [name for name in sorted(MUTATORS) for _ in range(WEIGHTS[name])]
    counts = [n for n in range(1, max_mutations + 1) for _ in range(max_mutations + 1 - n)]  # 1 most often

    @st.composite
    def build(draw: Draw) -> Mutant:
        seed = draw(st.sampled_from(seeds), label="seed")
        data = seed.text.encode()
        done = []
        for _ in range(draw(st.sampled_from(counts), label="how many")):
            kind = draw(st.sampled_from(kinds), label="mutator")
            data, desc = MUTATORS[kind](draw, data)
            data = data[:MAX_TEXT]
            done.append(f"{kind}: {desc}")
        return Mutant(seed, data, tuple(done))
    return build()


# ---- the stages and the property -----------------------------------------------------------------------

@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def fire(signum: int, frame: Any) -> None:
        raise FuzzTimeout(f"no result after {seconds}s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def codegen_module() -> Any:
    """`nnspec.backends.torch.codegen` when it exists and exposes `generate`, else None."""
    try:
        mod = importlib.import_module("nnspec.backends.torch.codegen")
    except ImportError:
        return None
    return mod if callable(getattr(mod, "generate", None)) else None


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
        """Runs the stages, keeping `self.stage` at the one running; ends at the last one that passed."""
        import nnspec
        import nnspec.compiler.check as check_module
        import nnspec.spec.load as load_module
        from nnspec.compiler.elaborate import UsageError

        # Each stage's work is done once: the top-level YAML loading is noticed as it returns (so an error after
        # it is the schema stage's), and `nnspec.check` is handed the spec already loaded.
        real_load_yaml = load_module.load_yaml

        def load_yaml(source: Any) -> Any:
            root = real_load_yaml(source)
            if self.stage == "load":
                self.stage = "schema"
            return root

        with mock.patch.object(load_module, "load_yaml", load_yaml):
            spec = load_module.load_source(load_module.read_source(path))
        self.stage = "check"
        with mock.patch.object(check_module, "load", lambda _: spec):
            result = nnspec.check(path)
        self.stage = "codegen"
        generated = self._generate(result)
        if not self.run_stage:
            return
        self.stage = "run"
        small = self._small(mutant.seed)
        if small:
            try:
                with mock.patch.object(check_module, "load", lambda _: spec):
                    result = nnspec.check(path, **{k: v for k, v in small.items() if k in spec.dims})
            except (SpecError, UsageError):
                self.skips["run: the shrunk model does not check"] += 1
                self.stage = "codegen"
                return
            generated = self._generate(result)
        self.stage = "run" if self._run(result, generated) else "codegen"
        if self.stage == "run":
            self.stage = "ok"

    def _generate(self, result: Any) -> list[tuple[int, str, str]]:
        """(opt level, source, model class) of the generated module at -O0 and -O2, each compiled by Python."""
        gen = codegen_module()
        if gen is None:
            self.skips["codegen: no codegen module"] += 1
            return []
        from nnspec.compiler.passes import optimize
        out = []
        for opt in GENERATED_OPT_LEVELS:
            model = result.model if opt == 0 else optimize(result.model, level=opt, training=True)
            module = gen.ModuleGen(model, spec_text=result.spec.source.text, doc=result.spec.doc, opt=opt)
            text = module.generate()
            compile(text, f"<generated -O{opt}>", "exec")
            out.append((opt, text, module.model_class))
        return out

    # -- the run stage --
    def _small(self, seed: Seed) -> dict[str, int] | None:
        if not seed.small_done:
            seed.small = shrink_dims(seed.text)
            seed.small_done = True
        return seed.small

    def _run(self, result: Any, generated: list[tuple[int, str, str]]) -> bool:
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

    def _run_models(self, result: Any, generated: list[tuple[int, str, str]], torch: Any) -> bool:
        from nnspec.backends.torch.interpreter import Interpreter, RuntimeShapeError
        from nnspec.compiler.analysis import estimate_parameter_bytes

        model = result.model
        if estimate_parameter_bytes(model) > SKIP_PARAM_BYTES:
            self.skips["run: parameters too large"] += 1
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
            for opt, text, class_name in generated:
                run_generated(text, class_name, interp, inputs, outputs, torch, f"-O{opt}")
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


def run_generated(text: str, class_name: str, interp: Any, inputs: dict[str, Any], want: dict[str, Any],
                  torch: Any, label: str) -> None:
    """The generated module, given the interpreter's weights, computes the interpreter's outputs (eval mode)."""
    namespace: dict[str, Any] = {"__name__": "nnspec_fuzz_generated"}
    exec(compile(text, f"<generated {label}>", "exec"), namespace)  # nnspec's own output, not spec text
    module = namespace[class_name]()
    module.load_state_dict(interp.root.state_dict())
    with torch.no_grad():
        got = module.eval()(**inputs)
    got = got if isinstance(got, dict) else {next(iter(want)): got}
    if sorted(got) != sorted(want):
        raise AssertionError(f"generated {label} returns {sorted(got)}, the interpreter {sorted(want)}")
    for name, value in want.items():
        try:
            torch.testing.assert_close(got[name], value, equal_nan=True, rtol=RTOL, atol=ATOL)
        except AssertionError as e:
            raise AssertionError(f"generated {label}, output {name}: {e}") from None


def free_sizes(model: Any, value: int) -> dict[Any, Any] | None:
    """Every free dim bound to `value`, over the model's declared dims."""
    import sympy
    sizes = dict(model.dims.values)
    for sym in model.dims.free.values():
        if sym not in sizes:
            sizes[sym] = sympy.Integer(value)
    return sizes


def largest_numel(model: Any, sizes: dict[Any, Any]) -> int:
    """The element count of the largest tensor of any graph (templates included), with `sizes` bound."""
    import sympy

    from nnspec.compiler.ir import TensorType
    worst = 0
    for graph in (model.graph, *model.templates.values()):
        for node in graph:
            types = node.type if isinstance(node.type, tuple) else (node.type,)
            for t in types:
                if isinstance(t, TensorType):
                    n = sympy.sympify(t.numel()).xreplace(sizes)
                    if not n.is_Integer:
                        return 1 << 62
                    worst = max(worst, int(n))
    return worst


def make_inputs(model: Any, sizes: dict[Any, Any], torch: Any) -> dict[str, Any]:
    import sympy

    from nnspec.backends.torch.lowering import TORCH_DTYPES
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, node_name in model.inputs.items():
        node = model.graph[node_name]
        t = node.type
        shape = [int(sympy.sympify(s).xreplace(sizes)) for s in t.sizes]
        dtype = TORCH_DTYPES[t.dtype]
        if dtype.is_floating_point:
            out[name] = torch.randn(shape, generator=gen).to(dtype)
        elif dtype == torch.bool:
            out[name] = torch.rand(shape, generator=gen) < 0.7
        else:
            out[name] = torch.zeros(shape, dtype=dtype)     # indices: 0 is in range of every table
    return out


def check_outputs(model: Any, outputs: dict[str, Any], sizes: dict[Any, Any], torch: Any) -> None:
    import sympy

    from nnspec.backends.torch.lowering import TORCH_DTYPES
    for name, node_name in model.outputs.items():
        t = model.graph[node_name].type
        want = tuple(int(sympy.sympify(s).xreplace(sizes)) for s in t.sizes)
        got = outputs[name]
        if tuple(got.shape) != want or got.dtype != TORCH_DTYPES[t.dtype]:
            raise AssertionError(f"output {name}: checked as {t} = {want}, ran as {tuple(got.shape)} {got.dtype}")


def shrink_dims(text: str) -> dict[str, int] | None:
    """`--set` values for a seed's integer dims that keep it valid and make it small; None if it is small.

    Every integer dim is first capped at one value (the smallest that still checks), then each is tried at 2 on
    its own (layer counts, heads): a 22-layer model of width 64 is still slow to run on every mutant."""
    import nnspec
    from nnspec.compiler.analysis import estimate_parameter_bytes
    from nnspec.spec.load import load

    def size(dims: dict[str, int]) -> int | None:
        try:
            return estimate_parameter_bytes(nnspec.check(text, **dims).model)
        except SpecError:
            return None

    if estimate_parameter_bytes(nnspec.check(text).model) <= SKIP_PARAM_BYTES // 8:
        return None
    ints = {n: d.value for n, d in load(text).dims.items() if isinstance(d.value, int)}
    for value in (8, 16, 4, 32, 2, 64):
        small = {n: min(v, value) for n, v in ints.items()}
        now = size(small)
        if now is not None and now <= SKIP_PARAM_BYTES // 8:
            break
    else:
        return None
    for name in sorted(small):
        if small[name] > 2:
            fewer = size({**small, name: 2})
            if fewer is not None and fewer <= now:
                small[name], now = 2, fewer
    return small
