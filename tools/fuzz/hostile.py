"""Mutators for the classes of hostile input issue 22 found by hand: each builds, inside a valid seed, the shape of
input that hung or crashed nnspec (nested repeats of a parameter-free block, adjacent weight-map placeholders,
outer products of many-term sizes, integers past Python's digit limit, ops given more operands than they take,
spec names that shadow the Triton target's generated names). The size of each is drawn, from harmless to far
past the limit, so the fuzzer also sees the accepted side of each bound."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import strategies as st

from tools.fuzz.text import Draw, as_bytes, as_text, replace_span
from tools.fuzz.yaml_values import dump, plain

COUNTS = [1, 2, 7, 400, 1000, 100_000]
RESERVED = ["K", "torch", "shape", "block", "F", "nn", "tl", "triton", "self", "training", "n", "offs", "mask",
            "seed", "BLOCK", "grid", "rows", "forward", "weight_maps", "_", "__x", "m" * 300, "m_h", "h_kernel",
            "WEIGHT_MAPS", "OPTIONS", "math", "x_torch", "elementwise_0"]
HUGE = ["9" * 5000, "0x" + "f" * 5000, "0o" + "7" * 5000, "1" + "0" * 400, "18446744073709551617", "1e400",
        "1:" + "5" * 100, "-" + "9" * 4400]


def _spec(data: bytes) -> dict[str, Any] | None:
    value = plain(data)
    return value if isinstance(value, dict) and isinstance(value.get("body"), str) else None


def _output_line(draw: Draw, value: dict[str, Any]) -> re.Match[str] | None:
    """An assignment to a declared output on one line of the body (`y = EXPR`)."""
    outputs = value.get("outputs")
    names = list(outputs) if isinstance(outputs, dict) else []
    found = [m for n in names for m in re.finditer(rf"(?m)^(\s*){re.escape(str(n))}\s*=\s*(.+)$", value["body"])]
    return draw(st.sampled_from(found)) if found else None


def m_nested_repeat(draw: Draw, data: bytes) -> tuple[bytes, str]:
    """An output wrapped in a repeat of a repeat of a parameter-free block (issue 22, item 1)."""
    value = _spec(data)
    m = _output_line(draw, value) if value else None
    if value is None or m is None:
        return data, "no output assignment"
    outer, inner = draw(st.sampled_from(COUNTS)), draw(st.sampled_from(COUNTS))
    shared = draw(st.sampled_from(["", ", shared=true"]))
    blocks = value.setdefault("blocks", {}) if isinstance(value.get("blocks", {}), dict) else {}
    blocks["fz_leaf(x)"] = "return relu(x)\n"
    blocks["fz_mid(x)"] = f"return repeat({inner}, fz_leaf, x{shared})\n"
    value["blocks"] = blocks
    line = f"{m.group(1)}{m.group(0).split('=', 1)[0].strip()} = repeat({outer}, fz_mid, {m.group(2)}{shared})"
    value["body"] = replace_span(value["body"], m.start(), m.end(), line)
    return dump(value), f"repeat({outer}, repeat({inner}, relu){shared}) around an output"


def m_placeholders(draw: Draw, data: bytes) -> tuple[bytes, str]:
    """A weight-map rule whose key has adjacent, digit-separated, numbered, repeated or broken placeholders, against
    parameter paths with long runs of digits (item 2, 9)."""
    value = _spec(data)
    if value is None:
        return data, "no spec"
    n = draw(st.integers(2, 28))
    key = draw(st.sampled_from(["fc." + "{a}" * n, ".".join(f"{{p{i}}}" for i in range(n)), "fc.{i}0{j}",
                                "fc.{i}{i}", "fc.{i}.{i}", "{0}", "{fc.weight", "fc}.weight", "h.{i}.{j}{k}",
                                "1" * 56 + ".{i}"]))
    theirs = draw(st.sampled_from(["x.{a}", "x", key, "m.{i}.{j}"]))
    weights = value.get("weights") if isinstance(value.get("weights"), dict) else {}
    source = draw(st.sampled_from(sorted(weights) or ["hf"]))
    rules = weights.get(source) if isinstance(weights.get(source), dict) else {}
    rules[key] = theirs + draw(st.sampled_from(["", " | optional"]))
    weights[source] = rules
    value["weights"] = weights
    return dump(value), f"weights.{source} rule {key[:40]!r}"


def m_axis_sums(draw: Draw, data: bytes) -> tuple[bytes, str]:
    """A new output: the outer product of `axes` axes, each the concatenation of `parts` free dims (item 3)."""
    value = _spec(data)
    if value is None or not isinstance(value.get("inputs"), dict) or not isinstance(value.get("outputs"), dict):
        return data, "no inputs or outputs"
    axes, parts = draw(st.integers(1, 24)), draw(st.integers(1, 9))
    over = ", ".join(f"fzn{i}" for i in range(parts))
    xs = ", ".join(f"fzx{i}" for i in range(parts))
    names = ", ".join(f"FZS{a}" for a in range(axes))
    for i in range(parts):
        value["inputs"][f"fzx{i}"] = f"float32[fzn{i}]"
    lines = [f"fza{a} = concat({xs}, over=({over}), into=FZS{a})" if parts > 1 else
             f"fza{a} = fzx0[FZS{a}]" for a in range(axes)]
    lines.append(f"fzy[{names}] = " + " * ".join(f"fza{a}" for a in range(axes)))
    value["body"] = value["body"].rstrip("\n") + "\n" + "\n".join(lines) + "\n"
    value["outputs"]["fzy"] = f"float32[{names}]"
    return dump(value), f"outer product of {axes} axes, each a sum of {parts} free dims"


def m_huge_int(draw: Draw, data: bytes) -> tuple[bytes, str]:
    """A number anywhere (a dim, an option, a literal, a type axis) replaced by one past every limit (item 10)."""
    text = as_text(data)
    numbers = list(re.finditer(r"(?<![\w.])\d+(?![\w.])", text))
    if not numbers:
        return data, "no number"
    m = draw(st.sampled_from(numbers))
    new = draw(st.sampled_from(HUGE))
    return as_bytes(replace_span(text, m.start(), m.end(), new)), f"number at {m.start()} -> {new[:12]}..."


def m_many_operands(draw: Draw, data: bytes) -> tuple[bytes, str]:
    """A new output made by concat or stack of many tensors, or a contraction of many factors (item 11)."""
    value = _spec(data)
    if value is None or not isinstance(value.get("inputs"), dict) or not isinstance(value.get("outputs"), dict):
        return data, "no inputs or outputs"
    n = draw(st.sampled_from([1, 2, 8, 9, 63, 64, 65, 200]))
    how = draw(st.sampled_from(["concat", "stack", "contract"]))
    if how == "contract":
        for i in range(n):
            value["inputs"][f"fzm{i}"] = f"float32[fzk{i}, fzk{i + 1}]"
        line = f"fzy[fzk0, fzk{n}] = " + " * ".join(f"fzm{i}" for i in range(n))
        value["outputs"]["fzy"] = f"float32[fzk0, fzk{n}]"
    else:
        value["inputs"]["fzc"] = "float32[fzn]"
        args = ", ".join(["fzc"] * n)
        line = f"fzy = concat({args}, over=fzn, into=FZC)" if how == "concat" else f"fzy = stack({args}, into=FZC)"
        value["outputs"]["fzy"] = "float32[FZC]" if how == "concat" else "float32[FZC, fzn]"
    value["body"] = value["body"].rstrip("\n") + "\n" + line + "\n"
    return dump(value), f"{how} of {n} operands"


def m_reserved_name(draw: Draw, data: bytes) -> tuple[bytes, str]:
    """A variable, input, output, block parameter or the model renamed to a name the generated code uses itself
    (the Triton target's `K`, `shape`, `block`, a launcher's name) or cannot hold (item 7)."""
    text = as_text(data)
    new = draw(st.sampled_from(RESERVED))
    if draw(st.booleans()):
        m = re.search(r"(?m)^name:\s*(\S+)\s*$", text)
        if m:
            return as_bytes(replace_span(text, m.start(1), m.end(1), new)), f"model name -> {new[:12]}"
    assigned = sorted({m.group(1) for m in re.finditer(r"(?m)^\s*([A-Za-z_]\w*)\s*(?:\[[^\]]*\])?\s*=", text)}
                      | {m.group(1) for m in re.finditer(r"(?m)^  ([A-Za-z_]\w*):\s*\w+\[", text)})
    if not assigned:
        return data, "no names"
    old = draw(st.sampled_from(assigned))
    return as_bytes(re.sub(rf"(?<![\w.]){re.escape(old)}(?!\w)", new, text)), f"name {old} -> {new[:12]}"


HOSTILE = {"hostile.nested_repeat": m_nested_repeat, "hostile.placeholders": m_placeholders,
           "hostile.axis_sums": m_axis_sums, "hostile.huge_int": m_huge_int,
           "hostile.many_operands": m_many_operands, "hostile.reserved_name": m_reserved_name}

__all__ = ["HOSTILE"]
