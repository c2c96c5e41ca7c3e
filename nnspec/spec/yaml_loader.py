"""Safe YAML loading into nodes that remember where they came from.

PyYAML's composer gives a node graph with marks; we convert it ourselves so that duplicate keys,
alias bombs, depth and size are refused *before* anything is expanded, and every value keeps a span.
Only YAML's safe scalar types are ever constructed: no tags, no Python objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from nnspec.errors import SpecError
from nnspec.spec.source import Source, Span, TextMap

MAX_BYTES = 1 << 20          # a spec is text written by a person: 1 MiB is generous
MAX_DEPTH = 64
MAX_INT_BITS = 256              # integers in a spec are sizes, counts and options: 2^256 is no one's
MAX_NODES = 100_000          # counted through aliases, so a billion-laughs file stops here


@dataclass(eq=False)
class YNode:
    """A YAML value with its span. Mappings hold `dict[str, YNode]`, sequences `list[YNode]`."""

    value: Any
    span: Span
    key_spans: dict[str, Span] = field(default_factory=dict)
    text: TextMap | None = None

    def plain(self) -> Any:
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value

    def at(self, path: tuple[Any, ...]) -> tuple[Span, bool]:
        """The span of the value at `path` (pydantic's `loc`), and whether the path was found whole."""
        node: YNode = self
        for key in path:
            in_dict = isinstance(node.value, dict) and isinstance(key, str) and key in node.value
            in_list = isinstance(node.value, list) and isinstance(key, int) and 0 <= key < len(node.value)
            if in_dict or in_list:
                node = node.value[key]
            else:
                return node.span, False
        return node.span, True


_SURROGATE = re.compile("[\ud800-\udfff]")


def decode(data: bytes, name: str, origin: Any = None) -> Source:
    """Bytes -> Source, refusing what is not a text spec with a located message."""
    if len(data) > MAX_BYTES:
        raise SpecError("E005", f"spec is {len(data):,} bytes; the limit is {MAX_BYTES:,}",
                        Source(name, "").span(0, 0))
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    nul = data.find(b"\x00")
    if nul >= 0:
        src = Source(name, data[:nul].decode("utf-8", "replace"))
        raise SpecError("E006", "spec contains a NUL byte: this looks like a binary file, not YAML",
                        src.span(len(src.text), len(src.text) + 1))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        src = Source(name, data[: e.start].decode("utf-8"))
        raise SpecError("E006", f"spec is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})",
                        src.span(len(src.text), len(src.text) + 1)) from None
    return Source(name, text, origin)


def load_yaml(source: Source) -> YNode:
    _refuse_tab_indentation(source)
    try:
        loader = yaml.SafeLoader(source.text)  # the reader refuses control characters here, before parsing
    except yaml.reader.ReaderError as e:
        at = e.position
        raise SpecError("E006", f"character {e.character:#06x} is not allowed in YAML (a control character)",
                        source.span(at, at + 1)) from None
    try:
        root = loader.get_single_node()
    except RecursionError:  # PyYAML composes recursively; depth beyond Python's stack is no spec
        raise SpecError("E005", f"spec nests deeper than {MAX_DEPTH} levels", source.span(0, 1)) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        offset = mark.index if mark is not None else 0
        problem = e.problem or e.context or "malformed YAML"
        raise SpecError("E001", f"YAML syntax error: {problem}", source.span(offset, offset + 1)) from None
    except yaml.YAMLError as e:
        raise SpecError("E001", f"YAML error: {e}", source.span(0, 1)) from None
    finally:
        loader.dispose()
    if root is None:
        raise SpecError("E008", "spec is empty", source.span(0, 0))
    return _Converter(source, loader).convert(root, 0)


def _refuse_tab_indentation(source: Source) -> None:
    offset = 0
    for line in source.text.split("\n"):
        stripped = line.lstrip(" ")
        if stripped.startswith("\t"):
            at = offset + len(line) - len(stripped)
            raise SpecError("E006", "tab used for indentation; YAML indents with spaces only",
                            source.span(at, at + 1))
        offset += len(line) + 1


class _Converter:
    def __init__(self, source: Source, loader: yaml.SafeLoader) -> None:
        self.source = source
        self.loader = loader
        self.count = 0

    def span(self, node: yaml.Node) -> Span:
        end = node.end_mark.index
        if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"):
            end = self.source.text.find("\n", node.start_mark.index)
        return self.source.span(node.start_mark.index, max(end, node.start_mark.index + 1))

    def convert(self, node: yaml.Node, depth: int) -> YNode:
        self.count += 1
        if self.count > MAX_NODES:
            raise SpecError("E005", f"spec expands to more than {MAX_NODES:,} YAML values "
                            "(aliases are counted each time they are used)", self.span(node))
        if depth > MAX_DEPTH:
            raise SpecError("E005", f"spec nests deeper than {MAX_DEPTH} levels", self.span(node))
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in (
                "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:omap"):
            raise SpecError("E004", f"YAML tag {node.tag} is not allowed in specs", self.span(node))
        if isinstance(node, yaml.MappingNode):
            out: dict[str, YNode] = {}
            keys: dict[str, Span] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise SpecError("E004", "YAML merge keys (`<<`) are not supported in specs",
                                    self.span(key_node))
                key = self.convert(key_node, depth + 1)
                if not isinstance(key.value, str):
                    raise SpecError("E004", f"mapping keys must be strings, got {key.value!r}", key.span)
                if key.value in out:
                    raise SpecError("E002", f"duplicate key '{key.value}'", key.span).with_note(
                        "first defined here", keys[key.value])
                keys[key.value] = key.span
                out[key.value] = self.convert(value_node, depth + 1)
            return YNode(out, self.span(node), keys)
        if isinstance(node, yaml.SequenceNode):
            return YNode([self.convert(n, depth + 1) for n in node.value], self.span(node))
        assert isinstance(node, yaml.ScalarNode)
        try:
            value = self.loader.construct_object(node, deep=False)
        except yaml.YAMLError as e:
            raise SpecError("E004", f"cannot read this value: {getattr(e, 'problem', e)}", self.span(node)) from None
        except ValueError:   # an int of more than 4,300 digits (Python's int/str limit), in any base
            raise SpecError("E023", f"this number has {len(node.value):,} characters; no size, count or option "
                            "needs more than a few dozen digits", self.span(node)) from None
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
            # 0x with 5,000 digits reads, but cannot even be printed in decimal in an error message
            raise SpecError("E023", f"this integer has {value.bit_length():,} bits; no size, count or option needs "
                            f"more than {MAX_INT_BITS}", self.span(node))
        if isinstance(value, str) and _SURROGATE.search(value):
            # `"\ud800"` in a double-quoted scalar: no file, docstring or terminal can hold it as UTF-8
            raise SpecError("E004", "this string holds a lone surrogate escape (\\ud800-\\udfff), which is no "
                            "character", self.span(node))
        if isinstance(value, bytes) or not isinstance(value, (str, int, float, bool, type(None))):
            raise SpecError("E004", f"values of YAML type {node.tag} are not allowed in specs", self.span(node))
        text = self._text_map(node, value) if isinstance(value, str) else None
        return YNode(value, self.span(node), text=text)

    def _text_map(self, node: yaml.ScalarNode, value: str) -> TextMap:
        start = node.start_mark.index
        src = self.source.text
        if node.style == "|":
            offsets = self._literal_offsets(node, value)
        elif node.style in ("'", '"') and "\n" not in src[start:node.end_mark.index]:
            raw = src[start + 1:node.end_mark.index - 1]
            offsets = [start + 1 + i for i in range(len(value))] if raw == value else [start] * len(value)
        elif node.style is None and src[start:start + len(value)] == value:
            offsets = [start + i for i in range(len(value))]
        else:
            offsets = [start] * len(value)
        offsets.append(offsets[-1] + 1 if offsets else start)
        return TextMap(self.source, offsets)

    def _literal_offsets(self, node: yaml.ScalarNode, value: str) -> list[int]:
        """Each value line of a `|` block is a source line with its indentation removed."""
        src = self.source
        header_line, _ = src.position(node.start_mark.index)
        lines = value.split("\n")
        indent = None
        for i, text in enumerate(lines):
            raw = src.line_text(header_line + 1 + i)
            if text and raw is not None and raw.endswith(text):
                indent = len(raw) - len(text)
                break
        offsets: list[int] = []
        for i, text in enumerate(lines):
            line = header_line + 1 + i
            raw = src.line_text(line)
            base = src.offset(line, 1) + (indent or 0) if raw is not None else len(src.text)
            offsets.extend(base + j for j in range(len(text)))
            if i < len(lines) - 1:
                offsets.append(base + len(text))  # the newline
        return offsets
