"""Neural circuit diagrams (Abbott, TMLR 2024) of a checked graph, as SVG written directly.

`circuit_svg` flattens the graph (`view`), draws what a reader sees as one step as one mark (`fuse`: split fans,
masks), decides how each op touches its wires (`roles`), lays out columns and tracks (`layout`), routes the wires
(`route`) and draws (`glyphs`, `experts`); with `wrap`, the strip is shown in rows (`wrap`). No external program is
involved and nothing depends on hashing, so a spec always gives the same bytes. Elements carry `data-`
attributes (node, axis, role) so that tests can find them; the evidence is their geometry. An op a transform
made or changed (`meta["transform"]`) has `data-transform` and a dashed outline in the transform colour under it
(`data-role="transform"`); a changed repeat's brackets take that colour.
"""

from __future__ import annotations

from nnspec.compiler.diagrams.fuse import fuse
from nnspec.compiler.diagrams.glyphs import (
    INK,
    NOTE_LINE,
    cup,
    dot,
    font_style,
    note,
    op_group,
    region_bracket,
    text,
    transform_outline,
)
from nnspec.compiler.diagrams.layout import (
    BUNDLE_GAP,
    LABEL_SIZE,
    MARGIN,
    NAME_SIZE,
    PITCH,
    SMALL_SIZE,
    TOP,
    Layout,
    layout,
)
from nnspec.compiler.diagrams.legend import legend, marks_used
from nnspec.compiler.diagrams.metrics import text_width
from nnspec.compiler.diagrams.route import Routes, route
from nnspec.compiler.diagrams.svg import El, document, num
from nnspec.compiler.diagrams.view import flatten, select_graph
from nnspec.compiler.diagrams.wrap import MAX_ASPECT, ROW_GAP, Row, cuttable, extent, max_width, min_font, rows_for
from nnspec.compiler.ir import Model

LABEL_RISE = 3.5      # an axis label's baseline sits this far above its wire


def circuit_svg(model: Model, *, expand: int = 0, block: str | None = None, legend: bool = True,
                wrap: bool = False) -> str:
    """The SVG text; with `legend`, a key to the marks it uses (cups, dots, triangles, ...) under it; with `wrap`,
    the strip cut into rows so that the image meets the size targets of `wrap.py` (what `nnspec render` draws)."""
    graph = select_graph(model, block)
    flat = fuse(flatten(model, graph, expand))
    lay = layout(flat)
    routes = route(lay)
    title = model.name if block is None else f"{model.name}: {graph.meta.get('block', graph.name)}"
    return document(_draw(title, lay, routes, model.transforms, legend, wrap))


def _draw(title: str, lay: Layout, routes: Routes, transforms: list[str] | None = None, key: bool = False,
          wrap: bool = False) -> El:
    flat = lay.flat
    body: list[El] = []
    under = El("g", {"data-role": "under"})
    body.append(under)
    wires = El("g", {"fill": "none", "stroke": INK, "stroke-width": 1.2, "data-role": "wires"})
    for seg in routes.segments:
        wires.add(El("path", {"d": seg.d(), "data-role": "wire", "data-axis": seg.axis, "data-value": seg.value,
                              "data-start": seg.start, "data-end": seg.end, "data-node": seg.node}))
    body.append(wires)
    labels = El("g", {"data-role": "labels"})
    seps = El("g", {"stroke": "#888888", "stroke-width": 1, "stroke-dasharray": "3 3", "data-role": "separators"})
    bottom = 0.0
    widest = 0.0          # the right end of notes under brackets and at the bottom
    for gap in lay.gaps:
        for n, cp in enumerate(gap.copies):
            for j, name in enumerate(cp.names):
                labels.add(text(gap.label_x, gap.y(cp, j) - LABEL_RISE, name, LABEL_SIZE, "label",
                                axis=name, value=cp.value, gap=str(gap.index)))
            bottom = max(bottom, gap.y(cp, len(cp.names) - 1))
            if n:
                above = gap.copies[n - 1]
                y = (gap.y(above, len(above.names) - 1) + gap.ys[cp.id]) / 2
                seps.add(El("line", {"x1": gap.x0 + gap.pad_left + 2, "y1": y, "x2": gap.x1 - gap.pad_right - 2,
                                     "y2": y, "data-role": "separator", "data-gap": gap.index}))
    body += [seps, labels]
    ops = El("g", {"data-role": "ops"})
    for col in lay.columns:
        for lane in col.lanes:
            bottom = max(bottom, lane.bottom + lane.bot_ext)
            if lane.kind == "op":
                ops.add(op_group(lane, col, under.children))  # type: ignore[arg-type]
                if lane.op is not None and lane.op.node.meta.get("transform"):
                    under.add(transform_outline(lane, col))
    for c in routes.cups:
        ops.add(cup(c))
    for d in routes.dots:
        ops.add(dot(d))
    body.append(ops)
    for region in flat.regions:
        cols = sorted({lay.col_of[o] for o in region.ops})
        if not cols:
            continue
        lanes = [lane for c in range(cols[0], cols[-1] + 1) for lane in lay.column(c).lanes]
        top = min(lane.y0 - lane.top_ext for lane in lanes) - 4
        low = max(lane.bottom + lane.bot_ext for lane in lanes) + 4
        left = lay.column(cols[0]).x0 - 7
        body.append(region_bracket(left, lay.column(cols[-1]).x1 + 7, top, low, region.count, region.scope,
                                   region.transform))
        bottom = max(bottom, low + 14 + (NOTE_LINE if region.transform else 0))
        if region.transform:
            widest = max(widest, left + text_width(region.transform, SMALL_SIZE))
    names = El("g", {"data-role": "names"})
    first, last = lay.columns[0], lay.gaps[-1]
    for lane in first.lanes:
        mid = (lane.y0 + lane.bottom) / 2
        names.add(text(lay.x_start - 6, mid + 4, next(n for n, v in flat.inputs if v == lane.value), NAME_SIZE,
                       "input", anchor="end", bold=True))
    right = lay.x_end
    for shown, vid in flat.outputs:
        cp = next(c for c in lay.copies[vid] if c.use.op < 0 and flat.outputs[c.use.operand][0] == shown)
        mid = last.ys[cp.id] + (len(cp.names) - 1) * PITCH / 2
        names.add(text(lay.x_end + 6, mid + 4, shown, NAME_SIZE, "output", anchor="start", bold=True))
        right = max(right, lay.x_end + 6 + text_width(shown, NAME_SIZE, True))
    body.append(names)
    names_bottom = max((lane.bottom + lane.bot_ext for lane in first.lanes), default=bottom)
    marks = marks_used(El("g", {}, list(body))) if key else []
    if wrap:
        return _wrapped(title, lay, body, right, names_bottom, transforms or [], marks)
    if transforms:        # what was applied, at the bottom: also what leaves no op to mark (a dropped branch)
        line = "transforms: " + "; ".join(transforms)
        bottom += NOTE_LINE + 8
        body.append(note(MARGIN, bottom, line, "transforms"))
        widest = max(widest, MARGIN + text_width(line, SMALL_SIZE))
    right = max(right, widest)
    if marks:
        group, tall, end = legend(marks, MARGIN, bottom + BUNDLE_GAP + 8, right - MARGIN)
        body.append(group)
        bottom += BUNDLE_GAP + tall
        right = max(right, end)
    return _svg(title, right + MARGIN, bottom + BUNDLE_GAP, body)


def _svg(title: str, width: float, height: float, body: list[El], **attrs: str) -> El:
    root = El("svg", {"xmlns": "http://www.w3.org/2000/svg", "width": num(width), "height": num(height),
                      "viewBox": f"0 0 {num(width)} {num(height)}", "data-diagram": "circuit", **attrs})
    root.add(font_style())
    root.add(El("rect", {"x": 0, "y": 0, "width": num(width), "height": num(height), "fill": "#ffffff"}))
    root.add(text(MARGIN, 22, title, 13.0, "title", anchor="start", bold=True))
    for el in body:
        root.add(el)
    return root


def _wrapped(title: str, lay: Layout, strip: list[El], right: float, names_bottom: float, transforms: list[str],
             marks: list[str]) -> El:
    """The strip drawn once (in `<defs>`) and shown in rows, each a clipped `<use>` of a window of it, stacked;
    the fewest rows that meet the width and aspect targets (`wrap.py`)."""
    end = right + MARGIN
    line = "transforms: " + "; ".join(transforms) if transforms else ""
    font = min(min_font(El("g", {}, list(strip))), SMALL_SIZE if line else 99.0,
               min_font(legend(marks, 0, 0, 0)[0]) if marks else 99.0)
    limit = max_width(font)
    gaps = cuttable(lay)
    plan: tuple[list[Row], float, float] | None = None
    for count in range(1, len(gaps) + 2):
        rows = [Row(x0, x1, *extent(lay, x0, x1, names_bottom)) for x0, x1 in rows_for(gaps, end, count)]
        width, height = _size(rows, line, marks)
        if plan is not None and width >= plan[1] - 0.5 and plan[1] <= MAX_ASPECT * plan[2]:
            break         # a piece wider than the target that no cut divides: more rows would only add height
        plan = (rows, width, height)
        if width <= limit and width <= MAX_ASPECT * height:
            break
    assert plan is not None
    rows, width, height = plan
    uid = "nnspec-" + "".join(c if c.isalnum() else "-" for c in title)
    defs = El("defs", {})
    body: list[El] = [defs]
    y = TOP - 14.0
    for n, row in enumerate(rows):
        defs.add(El("clipPath", {"id": f"{uid}-row{n}"},
                    [El("rect", {"x": num(row.x0), "y": num(row.top), "width": num(row.width),
                                 "height": num(row.height)})]))
        dx = 0.0 if row.x0 <= 0 else MARGIN - row.x0
        g = El("g", {"transform": f"translate({num(dx)} {num(y - row.top)})", "data-role": "row",
                     "data-x0": num(row.x0), "data-x1": num(row.x1), "data-top": num(row.top),
                     "data-bottom": num(row.bottom)})
        # `href` (SVG 2) and `xlink:href` (SVG 1.1 renderers: older librsvg, Inkscape 0.92)
        g.add(El("use", {"href": f"#{uid}-strip", "xlink:href": f"#{uid}-strip", "clip-path": f"url(#{uid}-row{n})"}))
        for x, more in ((row.x0, n > 0), (row.x1, n < len(rows) - 1)):   # where a row goes on: a dotted edge
            if more:
                g.add(El("path", {"d": f"M{num(x)} {num(row.top + 4)} V{num(row.bottom - 4)}", "stroke": "#999999",
                                  "stroke-width": 1, "stroke-dasharray": "1 3", "data-role": "row-break"}))
        body.append(g)
        y += row.height + ROW_GAP
    defs.add(El("g", {"id": f"{uid}-strip"}, list(strip)))
    bottom = y - ROW_GAP
    if line:
        bottom += NOTE_LINE + 8
        body.append(note(MARGIN, bottom, line, "transforms"))
    if marks:
        group, _, _ = legend(marks, MARGIN, bottom + BUNDLE_GAP + 8, width - 2 * MARGIN)
        body.append(group)
    return _svg(title, width, height, body, **{"xmlns:xlink": "http://www.w3.org/1999/xlink",
                                               "data-rows": str(len(rows))})


def _size(rows: list[Row], line: str, marks: list[str]) -> tuple[float, float]:
    """The image's width and height with these rows, the transforms line and the legend under them."""
    width = max(row.x1 if row.x0 <= 0 else MARGIN + row.width for row in rows) + MARGIN
    if line:
        width = max(width, MARGIN + text_width(line, SMALL_SIZE) + MARGIN)
    bottom = TOP - 14.0 + sum(row.height for row in rows) + ROW_GAP * (len(rows) - 1)
    if line:
        bottom += NOTE_LINE + 8
    if marks:
        _, tall, end = legend(marks, MARGIN, bottom + BUNDLE_GAP + 8, width - 2 * MARGIN)
        width = max(width, end + MARGIN)
        bottom += BUNDLE_GAP + tall
    return width, bottom + BUNDLE_GAP
