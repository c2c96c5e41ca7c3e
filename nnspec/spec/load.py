"""Spec text -> a validated `Spec`: declarations with parsed expressions, each with its span.

This is the whole of the spec layer's output; the compiler never sees YAML.
"""

from __future__ import annotations

import keyword
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from nnspec.errors import SpecError
from nnspec.spec import ast
from nnspec.spec.parser import parse
from nnspec.spec.schema import OptionDoc, validate, validate_library
from nnspec.spec.source import Source, Span
from nnspec.spec.yaml_loader import MAX_BYTES, YNode, decode, load_yaml

FORMAT_VERSIONS = (1,)


@dataclass
class DimDecl:
    name: str
    value: int | ast.Expr
    span: Span
    key_span: Span


@dataclass
class OptionDecl:
    name: str
    default: Any
    choices: list[Any] | None
    hf_key: str | None
    hf_values: dict[str, Any] | None
    span: Span
    key_span: Span


@dataclass
class TensorDecl:
    name: str
    type: ast.TypeExpr
    span: Span
    key_span: Span
    default: Any = None   # an optional input is filled with this value when not given


@dataclass
class BlockDecl:
    signature: ast.Signature
    body: list[ast.Stmt]
    span: Span


@dataclass
class RequireDecl:
    expr: ast.Expr
    span: Span


@dataclass
class WeightRule:
    """`"h.{i}.attn.c_attn.weight": "transformer.h.{i}.attn.c_attn.weight | transpose"`."""

    ours: str
    theirs: str
    transforms: list[str]
    span: Span


WEIGHT_TRANSFORMS = ("transpose", "squeeze(D, ...)", "unsqueeze(D, ...)", "split(D, N, I)", "optional")
_SQUEEZE = re.compile(r"(un)?squeeze\(\s*\d+(\s*,\s*\d+)*\s*\)$")
_SPLIT = re.compile(r"split\(\s*\d+\s*,\s*\d+\s*,\s*\d+\s*\)$")
# a placeholder in a checkpoint key: `{i}`, or an affine form of our index, `{2*i}`, `{2*i+1}`, `{i+3}`, for
# checkpoints that number what the spec nests (Swin's block 2i+1 is the second block of our pair i)
KEY_PLACEHOLDER = re.compile(r"\{(?:(\d+)\*)?([A-Za-z_]\w*)(?:\+(\d+))?\}")


@dataclass
class Spec:
    source: Source
    name: str
    name_span: Span
    doc: str | None
    dims: dict[str, DimDecl]
    options: dict[str, OptionDecl]
    require: list[RequireDecl]
    inputs: dict[str, TensorDecl]
    outputs: dict[str, TensorDecl]
    blocks: dict[str, BlockDecl]
    body: list[ast.Stmt]
    body_span: Span
    hf_ignore: list[str] = field(default_factory=list)
    hf_require: dict[str, tuple[Any, Span]] = field(default_factory=dict)
    hf_defaults: dict[str, tuple[Any, Span]] = field(default_factory=dict)
    weights: dict[str, list[WeightRule]] = field(default_factory=dict)
    weights_spans: dict[str, Span] = field(default_factory=dict)


def read_source(path_or_text: str | os.PathLike[str]) -> Source:
    """A `Path`, or a string without a newline, is a file; any other string is spec text."""
    if isinstance(path_or_text, os.PathLike) or "\n" not in path_or_text:
        path = Path(path_or_text)
        if "\x00" in str(path):
            raise FileNotFoundError(f"cannot read spec {str(path_or_text)!r}: a path cannot contain a NUL byte")
        try:
            data = read_bounded(path, str(path_or_text))
        except OSError as e:
            raise FileNotFoundError(f"cannot read spec {str(path_or_text)!r}: {e.strerror}") from None
        return decode(data, str(path_or_text), path)
    return decode(path_or_text.encode("utf-8"), "<string>")


def read_bounded(path: Path, name: str, limit: int = MAX_BYTES) -> bytes:
    """A file's bytes, refusing (E005) one over `limit` without reading more than that: its size as stat()
    gives it first, then the read itself is bounded (a pipe or /dev/zero has no size to stat)."""
    def too_big(size: str) -> SpecError:
        return SpecError("E005", f"{name} is {size} bytes; the limit is {limit:,}", Source(name, "").span(0, 0))
    size = path.stat().st_size
    if size > limit:
        raise too_big(f"{size:,}")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise too_big(f"more than {limit:,}")
    return data


def load(path_or_text: str | os.PathLike[str]) -> Spec:
    return load_source(read_source(path_or_text))


def load_source(source: Source) -> Spec:
    root = load_yaml(source)
    if isinstance(root.value, dict) and "nnspec" in root.value:
        version = root.value["nnspec"]
        if version.value not in FORMAT_VERSIONS or isinstance(version.value, bool):
            raise SpecError("E007", f"unsupported spec format version {version.value!r}; this nnspec reads "
                            f"version {', '.join(map(str, FORMAT_VERSIONS))}", version.span)
    doc = validate(root)
    top = root.value
    check_identifier(doc.name, top["name"].span, "model name")

    dims: dict[str, DimDecl] = {}
    for name, node in _items(top, "dims"):
        check_identifier(name, root.value["dims"].key_spans[name], "dim name")
        value: int | ast.Expr = node.value if isinstance(node.value, int) else _expr(node, "dimexpr")
        dims[name] = DimDecl(name, value, node.span, top["dims"].key_spans[name])

    options: dict[str, OptionDecl] = {}
    for name, node in _items(top, "options"):
        key_span = top["options"].key_spans[name]
        check_identifier(name, key_span, "option name")
        if name in dims:
            raise SpecError("E024", f"'{name}' is both a dim and an option", key_span).with_note(
                "dim declared here", dims[name].key_span)
        raw = doc.options[name]
        if isinstance(raw, OptionDoc):
            span = node.value["default"].span
            hf = raw.hf
            options[name] = OptionDecl(name, raw.default, raw.choices, hf.key if hf else None,
                                       hf.values if hf else None, span, key_span)
        else:
            options[name] = OptionDecl(name, raw, None, None, None, node.span, key_span)

    require = [RequireDecl(_expr(n, "dimexpr"), n.span) for n in _list(top, "require")]
    inputs = {name: _tensor(name, node, top["inputs"]) for name, node in _items(top, "inputs")}
    outputs = {name: _tensor(name, node, top["outputs"]) for name, node in _items(top, "outputs")}
    if not outputs:  # a model computes something: generated code would have nothing to return
        raise SpecError("E021", "the spec declares no outputs; name at least one with its type", top["outputs"].span)
    for name in outputs:
        if name in inputs:
            raise SpecError("E024", f"'{name}' is both an input and an output",
                            top["outputs"].key_spans[name]).with_note("input declared here",
                                                                      top["inputs"].key_spans[name])

    blocks: dict[str, BlockDecl] = {}
    _Includes(source).load(top, blocks)
    _add_blocks(source, top, blocks)

    hf_ignore: list[str] = []
    hf_require: dict[str, tuple[Any, Span]] = {}
    hf_defaults: dict[str, tuple[Any, Span]] = {}
    if doc.hf_config is not None:
        hf_ignore = list(doc.hf_config.ignore)
        for key, node in _items(top["hf_config"].value, "require"):
            hf_require[key] = (node.plain(), node.span)
        for key, node in _items(top["hf_config"].value, "defaults"):
            hf_defaults[key] = (node.plain(), node.span)

    weights: dict[str, list[WeightRule]] = {}
    weights_spans: dict[str, Span] = {}
    for source_name, node in _items(top, "weights"):
        rules = []
        for ours, value in node.value.items():
            theirs, *transforms = [part.strip() for part in value.value.split("|")]
            for t in transforms:
                if t not in ("transpose", "optional") and not _SQUEEZE.match(t) and not _SPLIT.match(t):
                    raise SpecError("E027", f"unknown weight transform '{t}' (known: {', '.join(WEIGHT_TRANSFORMS)})",
                                    value.span)
            problem = rule_key_problem(ours)
            if problem is not None:
                raise SpecError("E027", f"weights.{source_name} rule '{ours}': {problem}", node.key_spans[ours])
            if not theirs or _placeholders(ours) != sorted(m[1] for m in KEY_PLACEHOLDER.findall(theirs)):
                raise SpecError("E027", f"'{ours}' and '{theirs}' must use the same placeholders",
                                value.span)
            rules.append(WeightRule(ours, theirs, transforms, node.key_spans[ours]))
        weights[source_name] = rules
        weights_spans[source_name] = top["weights"].key_spans[source_name]

    return Spec(source, doc.name, top["name"].span, doc.doc, dims, options, require, inputs, outputs,
                blocks, _expr(top["body"], "start"), top["body"].span, hf_ignore, hf_require, hf_defaults, weights,
                weights_spans)


def _placeholders(pattern: str) -> list[str]:
    return sorted(re.findall(r"\{(\w+)\}", pattern))


def rule_key_problem(rule: str) -> str | None:
    """Why a rule's parameter path cannot be matched (None if it can): placeholders are `{identifier}`, each once,
    and two are separated by text holding a non-digit. `{i}{j}` (or `{i}0{j}`) could split a run of digits many
    ways: matching 14 of them against 28 digits backtracks for seconds, and the split would be a guess anyway."""
    parts = re.split(r"(\{[^{}]*\})", rule)
    names: set[str] = set()
    for i, part in enumerate(parts):
        if i % 2 == 0:
            if "{" in part or "}" in part:
                return "a '{' or '}' that is not part of a {name} placeholder"
            if 0 < i < len(parts) - 1 and (part == "" or part.isdigit()):
                return "two placeholders must be separated by text that is not only digits ('{i}.{j}')"
            continue
        name = part[1:-1]
        if not re.fullmatch(r"[A-Za-z_]\w*", name, re.ASCII):
            return f"placeholder {part} is not {{name}} with a name made of letters, digits and _"
        if name in names:
            return f"placeholder {part} appears twice"
        names.add(name)
    return None


def _add_blocks(source: Source, top: dict[str, YNode], blocks: dict[str, BlockDecl]) -> None:
    for key, node in _items(top, "blocks"):
        key_node = YNode(key, top["blocks"].key_spans[key])
        key_node.text = _key_text_map(source, key, top["blocks"].key_spans[key])
        sig = _expr(key_node, "signature")
        check_identifier(sig.name, sig.span, "block name")
        seen: set[str] = set()
        for param in sig.params:
            if param.name.startswith("__"):
                raise SpecError("E004", f"block parameter '{param.name}' is a reserved name (it starts with __)",
                                param.span)
            if param.name in seen:
                raise SpecError("E024", f"block '{sig.name}' names parameter '{param.name}' twice", param.span)
            seen.add(param.name)
        if sig.name in blocks:
            raise SpecError("E024", f"block '{sig.name}' defined twice", sig.span).with_note(
                "first defined here", blocks[sig.name].signature.span)
        blocks[sig.name] = BlockDecl(sig, _expr(node, "start"), node.span)


STDLIB = Path(__file__).resolve().parent.parent / "stdlib"
MAX_INCLUDES = 64
# together, included files are no bigger than one spec may be (64 includes of 1 MiB each took minutes and a GiB),
# and loading them stops after a time budget (a file can be small and still slow: deep YAML, long expressions)
MAX_INCLUDE_BYTES = MAX_BYTES
MAX_INCLUDE_SECONDS = 30.0


class _Includes:
    """Loads `include:` files: only below the spec's own directory or from `std/`, each once, no cycles."""

    def __init__(self, top: Source) -> None:
        self.root = Path(top.origin).resolve().parent if top.origin is not None else None
        self.loaded: set[Path] = set()
        self.chain: list[Path] = []
        self.bytes = 0
        self.started = time.monotonic()

    def load(self, doc: dict[str, YNode], blocks: dict[str, BlockDecl], base: Path | None = None,
             root: Path | None = None) -> None:
        base = base if base is not None else self.root
        root = root if root is not None else self.root
        for item in _list(doc, "include"):
            path, item_root = self.resolve(item.value, item.span, base, root)
            if path in self.chain:
                cycle = " -> ".join(p.name for p in [*self.chain, path])
                raise SpecError("E020", f"include cycle: {cycle}", item.span)
            if path in self.loaded:
                continue
            if len(self.loaded) >= MAX_INCLUDES:
                raise SpecError("E005", f"more than {MAX_INCLUDES} included files", item.span)
            self.loaded.add(path)
            try:
                data = read_bounded(path, self.display(path))
            except SpecError as err:  # too big: say so at the include
                raise SpecError(err.code, f"include '{item.value}': {err.message}", item.span) from None
            except OSError as e:
                raise SpecError("E028", f"include '{item.value}' cannot be read: {e.strerror}", item.span) from None
            self.bytes += len(data)
            if self.bytes > MAX_INCLUDE_BYTES:
                raise SpecError("E005", f"include '{item.value}': the included files hold more than "
                                f"{MAX_INCLUDE_BYTES:,} bytes together", item.span)
            if time.monotonic() - self.started > MAX_INCLUDE_SECONDS:
                raise SpecError("E005", f"include '{item.value}': loading the included files took more than "
                                f"{MAX_INCLUDE_SECONDS:g} s", item.span)
            source = decode(data, self.display(path), path)
            node = load_yaml(source)
            version = node.value.get("nnspec") if isinstance(node.value, dict) else None
            if version is not None and version.value not in FORMAT_VERSIONS:
                raise SpecError("E007", f"unsupported spec format version {version.value!r}", version.span)
            validate_library(node)
            self.chain.append(path)
            self.load(node.value, blocks, path.parent, item_root)
            self.chain.pop()
            _add_blocks(source, node.value, blocks)

    def resolve(self, ref: str, span: Span, base: Path | None, root: Path | None) -> tuple[Path, Path]:
        if "://" in ref or ref.startswith(("http:", "https:", "file:", "ftp:")):
            raise SpecError("E028", f"include '{ref}': URLs are not allowed; include files next to the spec", span)
        if "\x00" in ref:
            raise SpecError("E028", f"include {ref!r}: a path cannot contain a NUL byte", span)
        if "\\" in ref:
            raise SpecError("E028", f"include '{ref}': use / to separate directories", span)
        std = ref.startswith("std/")
        rel = PurePosixPath(ref[4:] if std else ref)
        if rel.is_absolute() or ref.startswith("~"):
            raise SpecError("E028", f"include '{ref}': absolute paths are not allowed", span)
        if ".." in rel.parts:
            raise SpecError("E028", f"include '{ref}': '..' is not allowed; includes stay inside the spec's "
                            "directory", span)
        if std:
            base, root = STDLIB, STDLIB
        elif base is None or root is None:
            raise SpecError("E028", f"include '{ref}': a spec given as text can include only std/ files", span)
        try:
            path = (base / rel).resolve()
            is_file = path.is_file()
        except (OSError, RuntimeError) as e:  # a name too long, a symbolic link loop (RuntimeError before 3.13)
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise SpecError("E028", f"include '{ref[:200]}' cannot be resolved: {why}", span) from None
        if not path.is_relative_to(root):
            where = "the standard library" if std else "the spec's directory"
            raise SpecError("E028", f"include '{ref}' resolves outside {where} (through a symbolic link?)", span)
        if not is_file:
            known = ", ".join(sorted("std/" + p.name for p in STDLIB.glob("*.yaml"))) if std else ""
            raise SpecError("E028", f"include '{ref}' not found" + (f" (the library has {known})" if known else ""),
                            span)
        return path, root

    def display(self, path: Path) -> str:
        if path.is_relative_to(STDLIB):
            return "std/" + path.relative_to(STDLIB).as_posix()
        try:
            return os.path.relpath(path)
        except ValueError:
            return str(path)


def _items(mapping: dict[str, YNode], key: str) -> list[tuple[str, YNode]]:
    node = mapping.get(key)
    return list(node.value.items()) if node is not None and isinstance(node.value, dict) else []


def _list(mapping: dict[str, YNode], key: str) -> list[YNode]:
    node = mapping.get(key)
    return list(node.value) if node is not None and isinstance(node.value, list) else []


def _expr(node: YNode, start: str) -> Any:
    assert node.text is not None, "validated string scalars always carry a text map"
    return parse(node.value, node.text, start)


def _tensor(name: str, node: YNode, parent: YNode) -> TensorDecl:
    check_identifier(name, parent.key_spans[name], "tensor name")
    if isinstance(node.value, dict):  # {type: ..., default: ...}
        default = node.value["default"].value if "default" in node.value else None
        return TensorDecl(name, _expr(node.value["type"], "typeexpr"), node.value["type"].span,
                          parent.key_spans[name], default)
    return TensorDecl(name, _expr(node, "typeexpr"), node.span, parent.key_spans[name])


def _key_text_map(source: Source, key: str, span: Span) -> Any:
    from nnspec.spec.source import TextMap

    start = source.offset(span.line, span.col)
    if source.text[start:start + len(key)] == key:
        return TextMap(source, [start + i for i in range(len(key) + 1)])
    if source.text[start + 1:start + 1 + len(key)] == key:  # quoted key
        return TextMap(source, [start + 1 + i for i in range(len(key) + 1)])
    return TextMap(source, [start] * (len(key) + 1))


_RESERVED = {"true", "false", "inf", "nan", "return", "if", "else", "and", "or", "not"}


def check_identifier(name: str, span: Span, what: str) -> None:
    """Names reach generated code and file names: only plain identifiers, never keywords."""
    if not name.isidentifier() or not name.isascii():
        raise SpecError("E004", f"{what} '{name}' is not an identifier (letters, digits, _; not starting "
                        "with a digit)", span)
    if keyword.iskeyword(name) or name in _RESERVED or name.startswith("__"):
        raise SpecError("E004", f"{what} '{name}' is a reserved word", span)
