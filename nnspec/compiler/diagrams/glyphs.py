"""The marks a circuit diagram draws for each op, as SVG elements: boxes on the wires an op acts on (bold
glyphs for learned maps, `+` for a bias), lifted glyphs over a bundle for elementwise functions, the softmax
triangle, reshape bars, cups and dots of contractions, copy dots and `xN` brackets; a dashed outline in the
transform colour around an op a transform made or changed."""

from __future__ import annotations

import itertools

from nnspec.compiler.diagrams import experts
from nnspec.compiler.diagrams.layout import (
    GLYPH_SIZE,
    LABEL_SIZE,
    SMALL_SIZE,
    TAPER,
    Column,
    Lane,
    subscript_width,
)
from nnspec.compiler.diagrams.metrics import FONT_FAMILY, text_width
from nnspec.compiler.diagrams.palette import TRANSFORM, colours
from nnspec.compiler.diagrams.route import Cup, Dot, box_half, box_span, op_span
from nnspec.compiler.diagrams.svg import El, num, text

INK = "#222222"
NOTE_LINE = 12.0      # the baseline of a transform note is this far below the line above it



def runs(marks: list[bool]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, on in enumerate(marks):
        if on and out and out[-1][1] == s - 1:
            out[-1] = (out[-1][0], s)
        elif on:
            out.append((s, s))
    return out


def op_group(lane: Lane, col: Column, under: list[El]) -> El:
    """The op's marks; anything that wires must pass over goes to `under`."""
    op, d = lane.op, lane.drawing
    assert op is not None and d is not None
    family = op.family
    fill, border = colours(family)
    g = El("g", {"data-node": op.id, "data-op": op.op, "data-role": d.kind, "data-family": family})
    if op.node.meta.get("transform"):
        g.attrs["data-transform"] = op.node.meta["transform"]
    a, b = op_span(lane, col)
    if d.mask:
        g.attrs["data-role"] = "mask"
        g.attrs["data-axes"] = " ".join(d.mask)
        if d.mask_shape:
            g.attrs["data-shape"] = d.mask_shape
    if d.kind in ("box", "bar", "split"):
        ba, bb = box_span(lane, col)
        half = box_half(lane)
        spans = runs(lane.boxed())
        for (_, s1), (s2, _) in itertools.pairwise(spans):   # one op: its boxes linked, under the wires
            x = (ba + bb) / 2
            link = f"M{num(x)} {num(lane.y(s1) + half)} V{num(lane.y(s2) - half)}"
            under.append(El("path", {"d": link, "stroke": border, "stroke-width": 3, "data-role": "link",
                                     "data-node": op.id}))
        for s0, s1 in spans:
            y0, y1 = lane.y(s0) - half, lane.y(s1) + half
            if d.moe[1]:     # the mixture's parts inside its box, under the wire it acts on
                experts.draw(g, ba, bb, lane.y(s1), half, *d.moe, fill, border)
                continue
            if d.stacked:
                right = bb - (20.0 if d.weighs else 0.0) - 2 * experts.STACK
                experts.stack_shadows(g, ba, y0, right, y1, border)
            if d.kind in ("bar", "split"):
                g.add(El("rect", {"x": ba + 2, "y": y0, "width": bb - ba - 4, "height": y1 - y0, "fill": "#555555",
                                  "data-role": "bar"}))
            elif d.shape == "trapezoid":     # narrowing to the right: the spatial axes shrink by the stride
                t = min(TAPER, (y1 - y0) / 4)
                outline = (f"M{num(ba)} {num(y0)} L{num(bb)} {num(y0 + t)} L{num(bb)} {num(y1 - t)} L{num(ba)} "
                           f"{num(y1)} Z")
                g.add(El("path", {"d": outline, "fill": fill, "stroke": border, "stroke-width": 1.2,
                                  "stroke-linejoin": "round", "data-role": "box", "data-shape": "trapezoid"}))
            else:
                g.add(El("rect", {"x": ba, "y": y0, "width": bb - ba, "height": y1 - y0, "rx": 3, "fill": fill,
                                  "stroke": border, "stroke-width": 1.2, "data-role": "box"}))
        if d.kind == "box" and spans and d.mask_shape:
            s0, s1 = max(spans, key=lambda r: (r[1] - r[0], -r[0]))
            _mask_shape(g, (ba + bb) / 2, (lane.y(s0) + lane.y(s1)) / 2, d.mask_shape, border)
        elif d.kind == "box" and spans and not d.moe[1]:
            s0, s1 = max(spans, key=lambda r: (r[1] - r[0], -r[0]))
            inset = TAPER if d.shape == "trapezoid" else 0.0    # centred in the trapezoid's wider part
            inset += (20.0 if d.weighs else 0.0) + (2 * experts.STACK if d.stacked else 0.0)
            _label(g, d.label, d.sup, d.bias, d.bold, (ba + bb - inset) / 2, (lane.y(s0) + lane.y(s1)) / 2,
                   d.stride)
            if d.causal:     # the causal mask it applies, under its name: the triangle, with the axes it relates
                mask = El("g", {"data-role": "mask", "data-axes": " ".join(d.causal), "data-shape": "causal_mask"})
                cx, cy = (ba + bb) / 2, (lane.y(s0) + lane.y(s1)) / 2
                _mask_shape(mask, cx, cy + 17, "causal_mask", border)
                mask.add(text(cx, cy + 37, " ".join(d.causal), SMALL_SIZE, "mask-axes"))
                g.add(mask)
            if d.weighs:     # the gates' weighted sum over the stack's axis
                experts.weighted_sum(g, bb - 11.0 - 2 * experts.STACK, (lane.y(s0) + lane.y(s1)) / 2, d.weighs)
        if d.mask and spans:      # the axes the mask relates, under its box
            g.add(text((ba + bb) / 2, lane.y(spans[-1][1]) + half + 10, " ".join(d.mask), SMALL_SIZE, "mask-axes"))
        if d.kind == "split":     # each member's name over its first wire, right of the bar
            for k, name in enumerate(d.members):
                y = lane.y(lane.out_slot((k, 0))) - 4
                label = text(bb + 2, y, name, LABEL_SIZE, "member", anchor="start", member=str(k))
                label.attrs["font-style"] = "italic"     # a name, not a learned map's bold glyph
                g.add(label)
        if d.count:
            _brackets(g, ba - 6, bb + 6, lane.y(0) - half - 4, lane.bottom + half + 4, d.count)
    elif d.kind == "lift":
        y = lane.y0 - 7.0
        cx = (a + b) / 2
        g.add(El("path", {"d": f"M{num(a + 2)} {num(y)} H{num(b - 5)}", "stroke": border, "stroke-width": 1.2,
                          "fill": "none", "data-role": "lift"}))
        g.add(El("path", {"d": f"M{num(b - 6)} {num(y - 3)} L{num(b - 1)} {num(y)} L{num(b - 6)} {num(y + 3)} Z",
                          "fill": border, "data-role": "arrowhead"}))
        g.add(text(cx, y - 4, d.label, LABEL_SIZE, "glyph"))
    elif d.kind == "softmax":
        assert d.mark is not None
        y = lane.y(lane.in_slot(d.mark))
        cx = (a + b) / 2
        g.add(El("path", {"d": f"M{num(cx - 6)} {num(y - 7)} L{num(cx + 7)} {num(y)} L{num(cx - 6)} {num(y + 7)} Z",
                          "fill": fill, "stroke": border, "stroke-width": 1.2, "data-role": "softmax",
                          "data-axis": lane.in_names[d.mark[0]][d.mark[1]]}))
    elif d.kind == "contract":
        g.add(text((a + b) / 2, lane.bottom + 9.0 + 9.0, d.note, SMALL_SIZE, "einsum", einsum=d.einsum))
    return g


def _label(g: El, label: str, sup: str, bias: bool, bold: bool, cx: float, cy: float, stride: str = "") -> None:
    main = text_width(label, GLYPH_SIZE, bold)
    small = max(text_width(sup, SMALL_SIZE), subscript_width(bias, stride))
    x = cx - (main + (small + 1 if small else 0)) / 2
    g.add(text(x, cy + 4, label, GLYPH_SIZE, "glyph", anchor="start", bold=bold))
    if sup:
        g.add(text(x + main + 1, cy - 2, sup, SMALL_SIZE, "name", anchor="start"))
    if bias:
        g.add(text(x + main + 1, cy + 9, "+", SMALL_SIZE, "bias", anchor="start"))
    if stride:
        at = x + main + 1 + (subscript_width(True, "") + text_width(" ", SMALL_SIZE) if bias else 0.0)
        g.add(text(at, cy + 9, stride, SMALL_SIZE, "stride", anchor="start"))


def _mask_shape(g: El, cx: float, cy: float, shape: str, ink: str) -> None:
    """The mask drawn in its box: a lower triangle (key index at most the query index) for a causal mask,
    rows down the query axis and columns along the key axis as the paper draws it; another source's mask as a
    filled square (its pattern is not drawn)."""
    r = 7.0
    if shape == "causal_mask":
        d = f"M{num(cx - r)} {num(cy - r)} L{num(cx + r)} {num(cy + r)} L{num(cx - r)} {num(cy + r)} Z"
    else:
        d = f"M{num(cx - r)} {num(cy - r)} H{num(cx + r)} V{num(cy + r)} H{num(cx - r)} Z"
    g.add(El("path", {"d": d, "fill": ink, "stroke": ink, "stroke-width": 1, "data-role": "mask-shape",
                      "data-shape": shape}))
    g.add(El("path", {"d": f"M{num(cx - r)} {num(cy - r)} H{num(cx + r)} V{num(cy + r)}", "fill": "none",
                      "stroke": ink, "stroke-width": 0.8, "data-role": "mask-frame"}))


def _brackets(g: El, left: float, right: float, top: float, bottom: float, count: int, ink: str = INK) -> None:
    for x, sign in ((left, 1), (right, -1)):
        g.add(El("path", {"d": f"M{num(x + 4 * sign)} {num(top)} H{num(x)} V{num(bottom)} H{num(x + 4 * sign)}",
                          "stroke": ink, "stroke-width": 1.6, "fill": "none", "data-role": "bracket",
                          "data-count": count}))
    g.add(text(right, bottom + 11, f"×{count}", LABEL_SIZE, "count", anchor="end"))


def region_bracket(left: float, right: float, top: float, bottom: float, count: int, scope: str,
                   transform: str = "") -> El:
    """The `xN` brackets of an inlined repeat; in the transform colour, with the notes as a tooltip and
    `data-transform`, when a transform changed the repeat (shared groups, variant iterations)."""
    g = El("g", {"data-role": "region", "data-scope": scope, "data-count": count})
    if transform:
        g.attrs["data-transform"] = transform
        g.add(El("title", {}, [transform]))
    _brackets(g, left, right, top, bottom, count, TRANSFORM if transform else INK)
    if transform:   # under the `xN`, from the left bracket
        g.add(note(left, bottom + 11 + NOTE_LINE, transform, "transform"))
    return g


def note(x: float, y: float, content: str, role: str) -> El:
    """A transform's note: small text in the transform colour (inline style: the sheet's `text` rule would win
    over a `fill` attribute)."""
    el = text(x, y, content, SMALL_SIZE, role, anchor="start")
    el.attrs["style"] = f"fill: {TRANSFORM}"
    return el


def transform_outline(lane: Lane, col: Column) -> El:
    """A dashed outline in the transform colour around an op a transform made or changed, drawn under the
    wires, with the notes as its tooltip."""
    op = lane.op
    assert op is not None
    top, bottom = lane.y0 - lane.top_ext - 3, lane.bottom + lane.bot_ext + 3
    return El("rect", {"x": num(col.z0 - 3), "y": num(top), "width": num(col.z1 - col.z0 + 6),
                       "height": num(bottom - top), "rx": 5, "fill": "none", "stroke": TRANSFORM,
                       "stroke-width": 1.6, "stroke-dasharray": "4 2", "data-role": "transform",
                       "data-node": op.id, "data-transform": op.node.meta["transform"]},
              [El("title", {}, [op.node.meta["transform"]])])


def cup(c: Cup) -> El:
    return El("path", {"d": c.d, "stroke": INK, "stroke-width": 1.3, "fill": "none", "data-role": "cup",
                       "data-node": c.node, "data-axis": c.axis})


def dot(d: Dot) -> El:
    return El("circle", {"cx": d.x, "cy": d.y, "r": 3.2 if d.role == "join" else 2.6, "fill": INK,
                         "data-role": d.role, "data-node": d.node, "data-axis": d.axis})


def font_style() -> El:
    return El("style", {}, [f"text {{ font-family: {FONT_FAMILY}; fill: {INK}; }}"])
