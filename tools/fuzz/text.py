"""Mutators of the text: bytes, lines and the expression language.

Each takes Hypothesis's `draw` and the current bytes, and returns new bytes and a description."""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from nnspec.errors import SpecError

MAX_TEXT = 64 << 10             # mutants never grow past 64 KiB (the loader's own limit is tested elsewhere)

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


def position(draw: Draw, n: int) -> int:
    return draw(st.integers(0, max(0, n)))


def as_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def as_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def m_flip(draw: Draw, data: bytes) -> tuple[bytes, str]:
    if not data:
        return b"\x00", "flip (empty)"
    i = position(draw, len(data) - 1)
    bit = draw(st.integers(0, 7))
    return data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1:], f"flip bit {bit} of byte {i}"


def m_insert_bytes(draw: Draw, data: bytes) -> tuple[bytes, str]:
    i = position(draw, len(data))
    ins = draw(st.sampled_from(INTERESTING_BYTES) | st.binary(min_size=1, max_size=4))
    return data[:i] + ins + data[i:], f"insert {ins!r} at {i}"


def m_odd_char(draw: Draw, data: bytes) -> tuple[bytes, str]:
    i = position(draw, len(data))
    while i > 0 and (data[i - 1] & 0xC0) == 0x80:   # keep multi-byte characters whole
        i -= 1
    ch = draw(st.sampled_from(ODD_CHARS)).encode()
    return data[:i] + ch + data[i:], f"insert {ch!r} at {i}"


def m_delete(draw: Draw, data: bytes) -> tuple[bytes, str]:
    i = position(draw, len(data))
    n = draw(st.integers(1, 40))
    return data[:i] + data[i + n:], f"delete {n} bytes at {i}"


def m_truncate(draw: Draw, data: bytes) -> tuple[bytes, str]:
    i = position(draw, len(data))
    return data[:i], f"truncate at {i}"


def m_duplicate(draw: Draw, data: bytes) -> tuple[bytes, str]:
    i = position(draw, len(data))
    n = draw(st.integers(1, 200))
    times = draw(st.integers(1, 4))
    return (data[:i] + data[i:i + n] * (times + 1) + data[i + n:])[:MAX_TEXT], f"repeat {n} bytes at {i} x{times}"


def m_duplicate_line(draw: Draw, data: bytes) -> tuple[bytes, str]:
    lines = data.split(b"\n")
    i = position(draw, len(lines) - 1)
    j = position(draw, len(lines))
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


def replace_span(text: str, start: int, end: int, new: str) -> str:
    return text[:start] + new + text[end:]


def m_swap_operator(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = as_text(data)
    toks = _tokens(text, "op", draw)
    if not toks:
        return m_insert_bytes(draw, data)
    m = draw(st.sampled_from(toks))
    arithmetic = ["+", "-", "*", "/", "//", "%", "**", "@"]
    # mostly another arithmetic operator, so the expression still parses and the checker sees it
    pool = arithmetic if m.group() in arithmetic and draw(st.integers(0, 3)) else OPERATORS
    new = draw(st.sampled_from(pool))
    return as_bytes(replace_span(text, m.start(), m.end(), new)), f"operator {m.group()!r} at {m.start()} -> {new!r}"


def near(draw: Draw, name: str) -> str:
    if not name:
        return "x"
    i = position(draw, len(name) - 1)
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
    text = as_text(data)
    toks = _tokens(text, "name", draw)
    if not toks:
        return m_insert_bytes(draw, data)
    m = draw(st.sampled_from(toks))
    others = sorted({t.group() for t in toks})
    how = draw(st.sampled_from(["near", "other", "builtin", "special", "everywhere"]))
    if how == "near":
        new = near(draw, m.group())
    elif how == "other":
        new = draw(st.sampled_from(others))
    elif how == "builtin":
        new = draw(st.sampled_from(_builtins()))
    else:
        new = draw(st.sampled_from(NAMES))
    if how == "everywhere":   # a consistent rename, so the spec may stay valid with an odd name
        out = re.sub(rf"\b{re.escape(m.group())}\b", new, text)
        return as_bytes(out), f"rename {m.group()!r} -> {new!r} everywhere"
    return as_bytes(replace_span(text, m.start(), m.end(), new)), f"name {m.group()!r} at {m.start()} -> {new!r}"


def m_delete_token(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = as_text(data)
    toks = _tokens(text, None, draw)
    if not toks:
        return m_delete(draw, data)
    m = draw(st.sampled_from(toks))
    return as_bytes(replace_span(text, m.start(), m.end(), "")), f"delete token {m.group()!r} at {m.start()}"


def m_duplicate_token(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = as_text(data)
    toks = _tokens(text, None, draw)
    if not toks:
        return m_duplicate(draw, data)
    m = draw(st.sampled_from(toks))
    sep = draw(st.sampled_from(["", " ", ", "]))
    return as_bytes(replace_span(text, m.start(), m.end(), m.group() + sep + m.group())), \
        f"duplicate token {m.group()!r} at {m.start()}"


def m_brackets(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = as_text(data)
    toks = _tokens(text, None, draw)
    if not toks:
        return m_insert_bytes(draw, data)
    a = draw(st.sampled_from(toks))
    how = draw(st.sampled_from(["wrap", "open", "close", "deep", "annotate", "call"]))
    if how == "wrap":
        b = draw(st.sampled_from([t for t in toks if t.start() >= a.start()]))
        new = text[:a.start()] + "(" + text[a.start():b.end()] + ")" + text[b.end():]
    elif how == "open":
        new = replace_span(text, a.start(), a.start(), draw(st.sampled_from(["(", "[", "{"])))
    elif how == "close":
        new = replace_span(text, a.end(), a.end(), draw(st.sampled_from([")", "]", "}"])))
    elif how == "deep":
        n = draw(st.sampled_from([3, 50, 199, 201, 300, 1000]))
        new = text[:a.start()] + "(" * n + a.group() + ")" * n + text[a.end():]
    elif how == "annotate":
        new = replace_span(text, a.end(), a.end(), draw(st.sampled_from(["[B, T]", "[]", "[B, T, d]", "[(B T)]",
                                                                        "[x]", "[1]", "[0]", "[-1]"])))
    else:
        new = replace_span(text, a.end(), a.end(), draw(st.sampled_from(["()", "(x)", "(x, x)", "(name=x)",
                                                                        "(over=T)", "(1, 2, 3, 4, 5, 6, 7)"])))
    return as_bytes(new), f"brackets {how} at {a.start()}"


def m_number(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = as_text(data)
    toks = _tokens(text, "num", draw) or _tokens(text, "name", draw)
    if not toks:
        return m_insert_bytes(draw, data)
    m = draw(st.sampled_from(toks))
    new = draw(st.sampled_from(INTERESTING_NUMBERS))
    return as_bytes(replace_span(text, m.start(), m.end(), new)), f"number {m.group()!r} at {m.start()} -> {new!r}"


def m_divisor(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = as_text(data)
    toks = [t for t in _tokens(text, None, draw) if t.lastgroup in ("num", "name")] or _tokens(text, None, draw)
    if not toks:
        return m_insert_bytes(draw, data)
    m = draw(st.sampled_from(toks))
    new = draw(st.sampled_from([" / 0", " // 0", " % 0", " / (1 - 1)", " / 0.0", " ** -1", " - " + m.group(),
                                " * -1", " * 0", " - 10**12", " * 10**12"]))
    return as_bytes(replace_span(text, m.end(), m.end(), new)), f"append {new!r} to {m.group()!r} at {m.start()}"


def m_negate(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = as_text(data)
    toks = [t for t in _tokens(text, None, draw) if t.lastgroup in ("num", "name")]
    if not toks:
        return m_insert_bytes(draw, data)
    m = draw(st.sampled_from(toks))
    new = draw(st.sampled_from(["-", "-(", "0 - ", "not "]))
    out = replace_span(text, m.start(), m.start(), new) + (")" if new == "-(" else "")
    if new == "-(":
        out = replace_span(text, m.start(), m.end(), f"-({m.group()})")
    return as_bytes(out), f"negate {m.group()!r} at {m.start()}"


def m_axes(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = as_text(data)
    spans = list(AXES.finditer(text))
    if not spans:
        return m_brackets(draw, data)
    m = draw(st.sampled_from(spans))
    items = [s.strip() for s in m.group(1).split(",")] if m.group(1).strip() else []
    how = draw(st.sampled_from(["drop", "dup", "swap", "group", "ungroup", "int", "name", "rename", "empty"]))
    if how == "drop" and items:
        del items[position(draw, len(items) - 1)]
    elif how == "dup" and items:
        i = position(draw, len(items) - 1)
        items.insert(i, items[i])
    elif how == "swap" and len(items) > 1:
        i = position(draw, len(items) - 2)
        items[i], items[i + 1] = items[i + 1], items[i]
    elif how == "group" and len(items) > 1:
        i = position(draw, len(items) - 2)
        items[i:i + 2] = [f"({items[i]} {items[i + 1]})"]
    elif how == "ungroup":
        items = [s.strip("()") for s in items]
    elif how == "int":
        items.insert(position(draw, len(items)), draw(st.sampled_from(["1", "0", "2", "3", "1000000000000", "007"])))
    elif how == "name":
        items.insert(position(draw, len(items)), draw(st.sampled_from(["B", "T", "S", "zz", "d", "(zz d)", "(2 zz)"])))
    elif how == "rename" and items:
        i = position(draw, len(items) - 1)
        items[i] = near(draw, items[i])
    elif how == "empty":
        items = []
    new = "[" + ", ".join(items) + "]"
    return as_bytes(replace_span(text, m.start(), m.end(), new)), f"axes {m.group()!r} at {m.start()} -> {new!r}"


def m_signature(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = as_text(data)
    sigs = list(SIGNATURE.finditer(text))
    if not sigs:
        return m_rename(draw, data)
    m = draw(st.sampled_from(sigs))
    params = [p.strip() for p in re.split(r",(?![^\[]*\])", m.group("params")) if p.strip()]
    name = m.group("name")
    how = draw(st.sampled_from(["drop", "add", "default", "annotate", "dup", "rename_block", "rename_param",
                                "reorder", "dunder"]))
    if how == "drop" and params:
        del params[position(draw, len(params) - 1)]
    elif how == "add":
        params.insert(position(draw, len(params)), draw(st.sampled_from(["extra", "n=2", "x", "d", "name", "w=0"])))
    elif how == "default" and params:
        i = position(draw, len(params) - 1)
        params[i] = params[i].split("=")[0] + "=" + draw(st.sampled_from(["2", "0", "-1", "x", "10**12", "1/0",
                                                                             "true", '"s"']))
    elif how == "annotate" and params:
        i = position(draw, len(params) - 1)
        params[i] = re.sub(r"\[.*\]", "", params[i].split("=")[0]) + draw(st.sampled_from(
            ["[B, T, d]", "[B]", "[]", "[(B T)]", "[B, B]", "[1, 2]"]))
    elif how == "dup" and params:
        params.append(params[0])
    elif how == "rename_block":
        name = draw(st.sampled_from([near(draw, name), *_builtins(), "forward", "__init__", "class", "Model"]))
    elif how == "rename_param" and params:
        i = position(draw, len(params) - 1)
        params[i] = draw(st.sampled_from(NAMES)) + params[i][len(re.match(r"\w*", params[i]).group()):]  # type: ignore[union-attr]
    elif how == "reorder" and len(params) > 1:
        params.reverse()
    elif how == "dunder":
        name = "__" + name + "__"
    new = f"{m.group('indent')}{name}({', '.join(params)}){m.group('rest')}"
    return as_bytes(replace_span(text, m.start(), m.end(), new)), f"signature {m.group().strip()!r} -> {new.strip()!r}"


def _builtins() -> list[str]:
    import nnspec.compiler.builtins  # noqa: F401
    from nnspec.compiler.elaborate import BUILTINS
    return sorted(BUILTINS)


def m_swap_builtin(draw: Draw, data: bytes) -> tuple[bytes, str]:
    text = as_text(data)
    known = set(_builtins())
    calls = [m for m in re.finditer(r"\b([A-Za-z_]\w*)\(", text) if m.group(1) in known]
    if not calls:
        return m_rename(draw, data)
    m = draw(st.sampled_from(calls))
    new = draw(st.sampled_from(sorted(known)))
    return as_bytes(replace_span(text, m.start(1), m.end(1), new)), f"call {m.group(1)} at {m.start()} -> {new}"
