"""The circuit diagram's legend: a sample of each mark the diagram uses, with what it means, drawn under it.

Only marks that occur are listed (found by their `data-role`, which the drawing code sets), in a fixed order, laid
out in rows no wider than the diagram (or `MIN_WIDTH`). Each entry is a `<g data-role="legend-entry"
data-mark=...>` so tests can match entries to the marks drawn.
"""

from __future__ import annotations

from nnspec.compiler.diagrams.glyphs import INK, text
from nnspec.compiler.diagrams.layout import LABEL_SIZE
from nnspec.compiler.diagrams.metrics import text_width
from nnspec.compiler.diagrams.palette import colours
from nnspec.compiler.diagrams.svg import El, num

MIN_WIDTH = 480.0
ROW = 22.0            # legend row height
SAMPLE = 26.0         # width of a sample mark
GAP = 18.0            # between entries

# mark -> what it means (a mark is a data-role, `learned` a box of a learned map)
MEANING: dict[str, str] = {
    "learned": "learned map (L; + with a bias)",
    "box": "op on the wires it touches; other wires pass over",
    "lift": "elementwise, applied along every wire",
    "softmax": "softmax over the wire it sits on",
    "cup": "summed axis (contraction)",
    "join": "shared axis joins",
    "copy": "copy",
    "bar": "reshape / split / merge",
    "split": "split: the bundle fans into its named members",
    "mask": "mask on the axes named under it (◣ causal); a mask wire enters it",
    "router": "router → top-k: the gates, k experts per token",
    "experts": "a stack of learned maps, one per expert",
    "weighted-sum": "Σ: the experts' outputs summed, weighted by the gates",
    "separator": "between tuple members",
    "bracket": "repeated block ×N",
}


def marks_used(root: El) -> list[str]:
    """The legend's marks that occur under `root`, in MEANING's order, then each op glyph drawn (`÷8`, `?−∞`,
    `D`) as `glyph:<text>:<op>`, in order of appearance: a reader learns `?−∞` is a `where`."""
    found: set[str] = set()
    glyphs: dict[str, list[str]] = {}    # op -> its glyphs drawn (`[0]`, `[1]`, `[2]` of one select: one entry)

    def walk(el: El, op: str, learned: bool) -> None:
        role = str(el.attrs.get("data-role", ""))
        if el.tag == "g" and "data-op" in el.attrs:
            op, learned = str(el.attrs["data-op"]), el.attrs.get("data-family") == "nn"
            if role == "box":
                found.add("learned" if learned else "box")
        if role in ("lift", "softmax", "cup", "join", "copy", "bar", "split", "mask", "router", "experts",
                    "weighted-sum", "separator", "bracket"):
            found.add(role)
        shown = el.children[0] if role == "glyph" and el.children and isinstance(el.children[0], str) else ""
        if shown and op and not learned and shown != op and shown not in glyphs.setdefault(op, []):
            glyphs[op].append(shown)
        for child in el.children:
            if isinstance(child, El):
                walk(child, op, learned)

    walk(root, "", False)
    return [m for m in MEANING if m in found] + [f"glyph:{' '.join(g[:3])}:{op}" for op, g in glyphs.items() if g]


def legend(marks: list[str], x0: float, y0: float, width: float) -> tuple[El, float, float]:
    """The legend group at (x0, y0), rows no wider than `width`: (group, its height, its right end)."""
    g = El("g", {"data-role": "legend"})
    width = max(width, MIN_WIDTH)
    x, y, right = x0, y0 + ROW / 2, x0
    g.add(text(x0, y0 - 2, "legend", LABEL_SIZE, "legend-title", anchor="start", bold=True))
    y += 6
    for mark in marks:
        words = MEANING[mark] if mark in MEANING else mark.split(":", 2)[2]
        sample = SAMPLE if mark in MEANING else max(SAMPLE, text_width(mark.split(":", 2)[1], 11.0))
        w = sample + 6 + text_width(words, LABEL_SIZE)
        if x > x0 and x + w > x0 + width:
            x, y = x0, y + ROW
        entry = El("g", {"data-role": "legend-entry", "data-mark": mark.split(":", 1)[0]})
        if mark.startswith("glyph:"):
            entry.attrs["data-glyph"] = mark.split(":", 2)[1]
        entry.add(_sample(mark, x, y))
        entry.add(text(x + sample + 6, y + 3.5, words, LABEL_SIZE, "legend-text", anchor="start"))
        g.add(entry)
        right = max(right, x + w)
        x += w + GAP
    return g, y + ROW / 2 - y0, right


def _sample(mark: str, x: float, y: float) -> El:
    g = El("g", {"data-role": "legend-sample"})
    if mark.startswith("glyph:"):    # the glyph itself, as drawn on its op
        g.add(text(x, y + 4, mark.split(":", 2)[1], 11.0, "legend-glyph", anchor="start"))
        return g
    wire = El("path", {"d": f"M{num(x)} {num(y)} H{num(x + SAMPLE)}", "stroke": INK, "stroke-width": 1.2,
                       "fill": "none"})
    mid = x + SAMPLE / 2
    if mark in ("learned", "box"):
        g.add(wire)
        fill, border = colours("nn" if mark == "learned" else "elementwise")
        g.add(El("rect", {"x": mid - 8, "y": y - 7, "width": 16, "height": 14, "rx": 3, "fill": fill,
                          "stroke": border, "stroke-width": 1.2}))
        if mark == "learned":
            g.add(text(mid, y + 4, "L", 10.0, "legend-glyph", bold=True))
    elif mark == "lift":
        g.add(wire)
        border = colours("elementwise")[1]
        g.add(El("path", {"d": f"M{num(x + 3)} {num(y - 6)} H{num(x + SAMPLE - 5)}", "stroke": border,
                          "stroke-width": 1.2, "fill": "none"}))
        g.add(El("path", {"d": f"M{num(x + SAMPLE - 6)} {num(y - 9)} L{num(x + SAMPLE - 1)} {num(y - 6)} "
                               f"L{num(x + SAMPLE - 6)} {num(y - 3)} Z", "fill": border}))
    elif mark == "softmax":
        g.add(wire)
        fill, border = colours("reduce")
        g.add(El("path", {"d": f"M{num(mid - 6)} {num(y - 7)} L{num(mid + 7)} {num(y)} L{num(mid - 6)} {num(y + 7)} Z",
                          "fill": fill, "stroke": border, "stroke-width": 1.2}))
    elif mark == "cup":
        g.add(El("path", {"d": f"M{num(x)} {num(y - 6)} H{num(mid)} C{num(mid + 8)} {num(y - 6)} {num(mid + 8)} "
                               f"{num(y + 6)} {num(mid)} {num(y + 6)} H{num(x)}", "stroke": INK, "stroke-width": 1.3,
                          "fill": "none"}))
    elif mark in ("join", "copy"):
        g.add(wire)
        g.add(El("circle", {"cx": mid, "cy": y, "r": 3, "fill": INK}))
    elif mark == "bar":
        g.add(wire)
        g.add(El("rect", {"x": mid - 2, "y": y - 8, "width": 4, "height": 16, "fill": "#555555"}))
    elif mark == "split":
        for dy in (-6, 0, 6):
            g.add(El("path", {"d": f"M{num(mid)} {num(y + dy)} H{num(x + SAMPLE)}", "stroke": INK, "stroke-width": 1,
                              "fill": "none"}))
        g.add(El("path", {"d": f"M{num(x)} {num(y)} H{num(mid)}", "stroke": INK, "stroke-width": 1.2, "fill": "none"}))
        g.add(El("rect", {"x": mid - 2, "y": y - 9, "width": 4, "height": 18, "fill": "#555555"}))
    elif mark == "mask":
        g.add(wire)
        fill, border = colours("elementwise")
        g.add(El("rect", {"x": mid - 8, "y": y - 8, "width": 16, "height": 16, "rx": 3, "fill": fill,
                          "stroke": border, "stroke-width": 1.2}))
        g.add(El("path", {"d": f"M{num(mid - 5)} {num(y - 5)} L{num(mid + 5)} {num(y + 5)} L{num(mid - 5)} "
                               f"{num(y + 5)} Z", "fill": border}))
    elif mark == "router":
        g.add(wire)
        border = colours("nn")[1]
        g.add(El("rect", {"x": x + 2, "y": y - 7, "width": SAMPLE - 4, "height": 14, "rx": 2, "fill": "#ffffff",
                          "stroke": border, "stroke-width": 1.1}))
        g.add(text(mid, y + 3, "k", 10.0, "legend-glyph"))
    elif mark == "experts":
        fill, border = colours("nn")
        for n in (2, 1, 0):
            g.add(El("rect", {"x": x + 4 + n * 3, "y": y - 6 - n * 3, "width": 14, "height": 12, "rx": 2,
                              "fill": fill if n == 0 else "#ffffff", "stroke": border, "stroke-width": 1.1}))
    elif mark == "weighted-sum":
        g.add(wire)
        g.add(El("circle", {"cx": mid, "cy": y, "r": 8, "fill": "#ffffff", "stroke": INK, "stroke-width": 1.2}))
        g.add(text(mid, y + 4, "Σ", 11.0, "legend-glyph"))
    elif mark == "separator":
        g.add(El("line", {"x1": x, "y1": y, "x2": x + SAMPLE, "y2": y, "stroke": "#888888", "stroke-width": 1,
                          "stroke-dasharray": "3 3"}))
    elif mark == "bracket":
        g.add(El("path", {"d": f"M{num(x + 6)} {num(y - 8)} H{num(x + 2)} V{num(y + 8)} H{num(x + 6)} "
                               f"M{num(x + SAMPLE - 6)} {num(y - 8)} H{num(x + SAMPLE - 2)} V{num(y + 8)} "
                               f"H{num(x + SAMPLE - 6)}", "stroke": INK, "stroke-width": 1.6, "fill": "none"}))
    return g
