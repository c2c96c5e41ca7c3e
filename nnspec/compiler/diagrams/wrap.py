"""Wrapping a circuit diagram into rows, so that it reads at a stated size.

A circuit diagram is one strip, left to right, as wide as its chain of ops is long: GPT-2's attention is about
1800 units wide and 500 high. Shown 900 px wide (a README column), that is text under 5 px. Wrapped, the strip
is cut at gaps into rows stacked top to bottom, each row showing a window of the same drawing (an SVG `<use>`
of it, clipped), so the layout, the routing and every `data-` attribute stay exactly those of the strip.

Targets (docs/diagrams.md): displayed `DISPLAY_WIDTH` px wide, no text under `MIN_TEXT_PX` px, and the whole
image no wider than `MAX_ASPECT` times its height. The strip is cut only in a gap, where every wire is straight
and labelled, and the gap cut is shown at the end of one row and again at the start of the next, labels and all,
so a reader picks each wire up by name. Gaps next to a repeat's brackets are not cut.
"""

from __future__ import annotations

from dataclasses import dataclass

from nnspec.compiler.diagrams.layout import Gap, Layout
from nnspec.compiler.diagrams.svg import El

DISPLAY_WIDTH = 900.0   # px: the width the image is shown at (a README column)
MIN_TEXT_PX = 12.0      # px: no text smaller than this at that width
MAX_ASPECT = 2.2        # width : height, at most
ROW_GAP = 16.0          # between two rows
EDGE = 2.0              # a window's cut edge stays this far inside its gap: clear of the strokes beside it


@dataclass(frozen=True)
class Row:
    x0: float             # the strip's window: x0..x1, top..bottom
    x1: float
    top: float
    bottom: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.bottom - self.top


def min_font(root: El) -> float:
    """The smallest font size of any text under `root`."""
    sizes = [float(el.attrs["font-size"]) for el in _walk(root) if el.tag == "text" and "font-size" in el.attrs]
    return min(sizes, default=12.0)


def max_width(font: float) -> float:
    """The widest image (SVG units) whose text of size `font` still shows at MIN_TEXT_PX at DISPLAY_WIDTH."""
    return DISPLAY_WIDTH * font / MIN_TEXT_PX


def cuttable(lay: Layout) -> list[Gap]:
    """The gaps a row may end in: between two op columns, not beside a repeat's brackets."""
    return [g for g in lay.gaps[1:-1] if g.pad_left == 0 and g.pad_right == 0]


def split_rows(gaps: list[Gap], end: float, limit: float) -> list[tuple[float, float]]:
    """Greedy: each row runs as far as it can within `limit` (or to its first gap, when none fits); a row ends just
    inside a gap's right end and the next one starts just inside its left end (the gap shows in both; the marks
    on either side of it, in neither). (x0, x1) per row."""
    rows: list[tuple[float, float]] = []
    start = 0.0
    while end - start > limit:
        later = [g for g in gaps if g.x0 + EDGE > start + 1.0]
        if not later:
            break
        fits = [g for g in later if g.x1 - EDGE - start <= limit]
        g = fits[-1] if fits else later[0]
        rows.append((start, g.x1 - EDGE))
        start = g.x0 + EDGE
    rows.append((start, end))
    return rows


def rows_for(gaps: list[Gap], end: float, count: int) -> list[tuple[float, float]]:
    """About `count` rows of even width: the narrowest limit at which the greedy split needs at most `count`."""
    lo, hi = 1.0, end
    best = split_rows(gaps, end, hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        rows = split_rows(gaps, end, mid)
        if len(rows) <= count:
            best, hi = rows, mid
        else:
            lo = mid
    return best


def extent(lay: Layout, x0: float, x1: float, names_bottom: float) -> tuple[float, float]:
    """The y range of what the strip draws between x0 and x1: lanes with their marks, labelled gap wires,
    brackets and their counts."""
    top, bottom = float("inf"), float("-inf")
    for col in lay.columns:
        if col.x1 <= x0 + EDGE or col.x0 >= x1 - EDGE:
            continue
        for lane in col.lanes:
            top = min(top, lane.y0 - lane.top_ext)
            bottom = max(bottom, lane.bottom + lane.bot_ext)
    for gap in lay.gaps:
        if gap.x1 <= x0 + EDGE or gap.x0 >= x1 - EDGE:
            continue
        for cp in gap.copies:
            top = min(top, gap.ys[cp.id] - 14.0)
            bottom = max(bottom, gap.y(cp, len(cp.names) - 1) + 4.0)
    for region in lay.flat.regions:
        cols = [lay.column(lay.col_of[o]) for o in region.ops]
        # its brackets stand at its first and last column, as tall as the whole region: a row holding either
        # holds that height; a row holding only the middle of the region holds only its own lanes
        ends = [min(c.x0 for c in cols) - 8, max(c.x1 for c in cols) + 8] if cols else []
        if any(x0 + EDGE - 8 < x < x1 - EDGE + 8 for x in ends):
            lanes = [lane for c in cols for lane in c.lanes]
            notes = 14.0 if region.transform else 0.0      # its transform note, under the count
            bottom = max(bottom, max(lane.bottom + lane.bot_ext for lane in lanes) + 4 + 16.0 + notes)
            top = min(top, min(lane.y0 - lane.top_ext for lane in lanes) - 4)
    if x0 <= 0:
        bottom = max(bottom, names_bottom)
    return top - 6.0, bottom + 6.0


def _walk(el: El) -> list[El]:
    out = [el]
    for c in el.children:
        if isinstance(c, El):
            out += _walk(c)
    return out
