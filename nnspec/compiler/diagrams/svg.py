"""A tiny deterministic SVG writer: elements keep attribute insertion order, numbers print with at most two
decimals and never as `-0`, so the same scene always gives the same bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

Attr = str | int | float


def num(v: float) -> str:
    text = f"{round(float(v), 2):.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


@dataclass
class El:
    tag: str
    attrs: dict[str, Attr] = field(default_factory=dict)
    children: list[El | str] = field(default_factory=list)

    def add(self, child: El | str) -> El | str:
        self.children.append(child)
        return child

    def write(self, out: list[str], indent: int) -> None:
        pad = "  " * indent
        attrs = "".join(f" {k}={quoteattr(num(v) if isinstance(v, float) else str(v))}"
                        for k, v in self.attrs.items())
        if not self.children:
            out.append(f"{pad}<{self.tag}{attrs}/>")
        elif all(isinstance(c, str) for c in self.children):
            out.append(f"{pad}<{self.tag}{attrs}>{''.join(escape(str(c)) for c in self.children)}</{self.tag}>")
        else:
            out.append(f"{pad}<{self.tag}{attrs}>")
            for c in self.children:
                if isinstance(c, El):
                    c.write(out, indent + 1)
                else:
                    out.append(pad + "  " + escape(c))
            out.append(f"{pad}</{self.tag}>")


def document(root: El) -> str:
    out = ['<?xml version="1.0" encoding="UTF-8"?>']
    root.write(out, 0)
    return "\n".join(out) + "\n"


def text(x: float, y: float, content: str, size: float, role: str, *, anchor: str = "middle",
         bold: bool = False, **data: str) -> El:
    attrs: dict[str, str | float] = {"x": x, "y": y, "font-size": num(size)}
    if anchor != "start":
        attrs["text-anchor"] = anchor
    if bold:
        attrs["font-weight"] = "bold"
    attrs["data-role"] = role
    attrs.update({f"data-{k}": v for k, v in data.items()})
    return El("text", attrs, [content])
