"""Mutators of the spec's structure (keys, value kinds, dims, dtypes, blocks, ops), the table of every mutator,
and the Hypothesis strategy drawing mutants."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from tools.fuzz.hostile import HOSTILE
from tools.fuzz.seeds import Mutant, Seed
from tools.fuzz.text import (
    KEYS,
    MAX_TEXT,
    NAMES,
    SCALARS,
    Draw,
    as_bytes,
    as_text,
    m_axes,
    m_brackets,
    m_delete,
    m_delete_token,
    m_divisor,
    m_duplicate,
    m_duplicate_line,
    m_duplicate_token,
    m_flip,
    m_insert_bytes,
    m_negate,
    m_number,
    m_odd_char,
    m_rename,
    m_signature,
    m_swap_builtin,
    m_swap_operator,
    m_truncate,
    near,
    replace_span,
)
from tools.fuzz.yaml_values import dump, plain, value_at, value_paths


def structural(fn: Callable[[Draw, Any], str]) -> Callable[[Draw, bytes], tuple[bytes, str]]:
    """A mutator of the spec's YAML value: read as plain values, changed in place by `fn`, dumped back (a mutant
    that no longer loads gets bytes inserted instead)."""
    def mutator(draw: Draw, data: bytes) -> tuple[bytes, str]:
        value = plain(data)
        if value is None:
            return m_insert_bytes(draw, data)
        desc = fn(draw, value)
        return dump(value), desc
    mutator.__name__ = fn.__name__
    return mutator


@structural
def m_drop_key(draw: Draw, value: Any) -> str:
    paths = list(value_paths(value))
    if not paths:
        return "no keys"
    path = draw(st.sampled_from(paths))
    parent = value_at(value, path[:-1])
    del parent[path[-1]]
    return f"drop {'.'.join(map(str, path))}"


@structural
def m_rename_key(draw: Draw, value: Any) -> str:
    paths = [p for p in value_paths(value) if isinstance(value_at(value, p[:-1]), dict)]
    if not paths:
        return "no keys"
    path = draw(st.sampled_from(paths))
    parent = value_at(value, path[:-1])
    old = path[-1]
    new = draw(st.sampled_from([near(draw, str(old)), *KEYS, *NAMES]))
    items = [(new if k == old else k, v) for k, v in parent.items()]
    parent.clear()
    parent.update(items)
    return f"rename key {'.'.join(map(str, path))} -> {new!r}"


@structural
def m_change_type(draw: Draw, value: Any) -> str:
    paths = list(value_paths(value))
    if not paths:
        return "no values"
    path = draw(st.sampled_from(paths))
    parent = value_at(value, path[:-1])
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


@structural
def m_alias(draw: Draw, value: Any) -> str:
    """The same object at two places: the dumper writes an anchor and an alias."""
    paths = list(value_paths(value))
    if len(paths) < 2:
        return "no values"
    src = draw(st.sampled_from(paths))
    dst = draw(st.sampled_from(paths))
    try:
        value_at(value, dst[:-1])[dst[-1]] = value_at(value, src)
    except (KeyError, IndexError, TypeError):
        return "alias (stale path)"
    return f"alias {'.'.join(map(str, dst))} = *{'.'.join(map(str, src))}"


@structural
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


@structural
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
    text = as_text(data)
    dims = list(re.finditer(r"(?m)^  ([A-Za-z_]\w*): (\d+)\b", text))
    if not dims:
        return m_number(draw, data)
    m = draw(st.sampled_from(dims))
    new = str(draw(st.sampled_from([1, 2, 3, 4, 5, 6, 8, 12, 16, 32])))
    return as_bytes(replace_span(text, m.start(2), m.end(2), new)), f"dim {m.group(1)} {m.group(2)} -> {new}"


DTYPES = ["float32", "float16", "bfloat16", "int64", "int32", "bool", "float", "float64", "int8", "complex64"]
DTYPE_WORD = re.compile(r"\b(float32|float16|bfloat16|int64|int32|bool|float)\b")


def m_dtype(draw: Draw, data: bytes) -> tuple[bytes, str]:
    """A dtype in a type (`float32[B, d]`), a cast or a `dtype=` argument swapped for another, or for one nnspec
    does not know."""
    text = as_text(data)
    found = list(DTYPE_WORD.finditer(text))
    if not found:
        return m_rename(draw, data)
    m = draw(st.sampled_from(found))
    new = draw(st.sampled_from(DTYPES))
    return as_bytes(replace_span(text, m.start(), m.end(), new)), f"dtype {m.group()!r} at {m.start()} -> {new!r}"


def _block_name(signature: str) -> str:
    return signature.split("(", 1)[0].strip()


@structural
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
    text = as_text(data)
    calls = [m for m in re.finditer(r"\b([A-Za-z_]\w*)\(", text) if m.group(1) in UNARY_CALLS]
    if not calls:
        return m_swap_builtin(draw, data)
    m = draw(st.sampled_from(calls))
    new = draw(st.sampled_from(UNARY_CALLS))
    return as_bytes(replace_span(text, m.start(1), m.end(1), new)), f"call {m.group(1)} at {m.start()} -> {new}"


MUTATORS: dict[str, Callable[[Draw, bytes], tuple[bytes, str]]] = {
    "bytes.flip": m_flip, "bytes.insert": m_insert_bytes, "bytes.odd_char": m_odd_char, "bytes.delete": m_delete,
    "bytes.truncate": m_truncate, "bytes.duplicate": m_duplicate, "yaml.duplicate_line": m_duplicate_line,
    "yaml.drop_key": m_drop_key, "yaml.rename_key": m_rename_key, "yaml.change_type": m_change_type,
    "yaml.alias": m_alias, "expr.operator": m_swap_operator, "expr.rename": m_rename,
    "expr.delete_token": m_delete_token, "expr.duplicate_token": m_duplicate_token, "expr.brackets": m_brackets,
    "expr.number": m_number, "expr.divisor": m_divisor, "expr.negate": m_negate, "axes": m_axes,
    "blocks.signature": m_signature, "blocks.whole": m_block, "ops.swap": m_swap_builtin, "ops.unary": m_swap_unary,
    "types.dtype": m_dtype, "types.option": m_option, "dims.value": m_dim_value, "dims.small": m_small_dim,
    **HOSTILE,
}


# Mutations of the expression language are drawn more often: most byte and YAML mutations stop at the loader or
# the schema, and the checker and the interpreter have the most rules to get wrong.
WEIGHTS = {name: 3 if name.startswith(("expr.", "axes", "ops.")) else
           2 if name.startswith(("blocks.", "dims.", "types.")) else 1 for name in MUTATORS}


def mutants(seeds: list[Seed], max_mutations: int = 3,
            only: list[str] | None = None) -> st.SearchStrategy[Mutant]:
    """Seeds with 1 to `max_mutations` mutations, drawn by weight from `MUTATORS` (or from `only`)."""
    kinds = [name for name in sorted(only or MUTATORS) for _ in range(WEIGHTS[name])]
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
