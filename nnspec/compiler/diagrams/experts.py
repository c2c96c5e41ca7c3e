"""Mixtures of experts in a circuit diagram: the routing drawn, not one learned box.

A `moe` op (Mixtral, Qwen2-MoE) is one op of the graph, but a reader needs its parts: the token's features fork;
one branch goes through the router (a learned map onto the experts axis) and top-k, which make the gates; the other
through the experts, a stack of learned maps indexed by the experts axis; the gate-weighted sum over the experts
(Σ) joins them. All of it is drawn inside the op's box, under the wire it acts on, with the experts axis named
under it. The dense form written out in a spec (`examples/small/moe.yaml`) is drawn from its own ops: a learned
map indexed by its weight's leading axis is a stack (`stack`), and one that also sums the gates over that axis
carries the Σ (`weighted_sum`).
"""

from __future__ import annotations

from nnspec.compiler.diagrams.metrics import text_width
from nnspec.compiler.diagrams.svg import El, num, text

DROP = 30.0          # the router's row lies this far under the wire
FOOT = 24.0          # and the caption (the experts axis) under it
STACK = 3.0          # each map of a stack is offset by this, up and right
INK = "#222222"
GLYPH, SMALL = 11.0, 10.0


def _parts(router: str, k: int) -> tuple[float, float, float]:
    """(router box, top-k box, experts stack) widths."""
    router_w = text_width("L", GLYPH, True) + text_width(router, SMALL) + 12
    topk_w = text_width(f"top-{k}", SMALL) + 10
    experts_w = text_width("L", GLYPH, True) + text_width("e", SMALL) + 14
    return router_w, topk_w, experts_w


def caption(experts: str, k: int) -> str:
    return f"e ∈ {experts}, top-{k} per token"


def width(router: str, experts: str, k: int) -> float:
    router_w, topk_w, experts_w = _parts(router, k)
    return max(18 + router_w + 8 + topk_w + 34, 18 + experts_w + 2 * STACK + 40, text_width(caption(experts, k),
                                                                                              SMALL) + 14)


def extra_below() -> float:
    """How far the box reaches under the wire it acts on."""
    return DROP + FOOT


def draw(g: El, ba: float, bb: float, y: float, half: float, router: str, experts: str, k: int, fill: str,
         border: str) -> None:
    """The mixture inside its box: `y` is the wire it acts on, entering at `ba` and leaving at `bb`."""
    router_w, topk_w, experts_w = _parts(router, k)
    g.add(El("rect", {"x": ba, "y": y - half, "width": bb - ba, "height": half + DROP + FOOT, "rx": 3, "fill": fill,
                      "stroke": border, "stroke-width": 1.2, "data-role": "box"}))
    yr = y + DROP
    fork, sigma = ba + 8.0, bb - 18.0
    wires = [f"M{num(ba)} {num(y)} H{num(ba + 18)}", f"M{num(fork)} {num(y)} V{num(yr)} H{num(ba + 18)}",
             f"M{num(ba + 18 + experts_w + 2 * STACK)} {num(y)} H{num(sigma - 8)}", f"M{num(sigma + 8)} {num(y)} "
             f"H{num(bb)}", f"M{num(ba + 18 + router_w)} {num(yr)} H{num(ba + 26 + router_w)}",
             f"M{num(ba + 26 + router_w + topk_w)} {num(yr)} H{num(sigma)} V{num(y + 8)}"]
    for d in wires:
        g.add(El("path", {"d": d, "stroke": INK, "stroke-width": 1.1, "fill": "none", "data-role": "moe-wire"}))
    g.add(El("circle", {"cx": fork, "cy": y, "r": 2.6, "fill": INK, "data-role": "moe-fork"}))
    # the experts: a stack of learned maps, one per index of the experts axis
    stack = El("g", {"data-role": "experts", "data-axis": experts})
    x0 = ba + 18
    for n in (2, 1, 0):
        stack.add(El("rect", {"x": x0 + n * STACK, "y": y - 8 - n * STACK, "width": experts_w, "height": 16, "rx": 2,
                              "fill": "#ffffff" if n else fill, "stroke": border, "stroke-width": 1.1}))
    _learned(stack, x0 + experts_w / 2, y, "e")
    g.add(stack)
    # the router and top-k: the gates
    route = El("g", {"data-role": "router", "data-k": str(k)})
    route.add(El("rect", {"x": ba + 18, "y": yr - 8, "width": router_w, "height": 16, "rx": 2, "fill": fill,
                          "stroke": border, "stroke-width": 1.1}))
    _learned(route, ba + 18 + router_w / 2, yr, router)
    tx = ba + 26 + router_w
    route.add(El("rect", {"x": tx, "y": yr - 8, "width": topk_w, "height": 16, "rx": 2, "fill": "#ffffff",
                          "stroke": border, "stroke-width": 1.1, "data-role": "topk"}))
    route.add(text(tx + topk_w / 2, yr + 3.5, f"top-{k}", SMALL, "topk"))
    g.add(route)
    # the gate-weighted sum over the experts
    weighted_sum(g, sigma, y, experts)
    g.add(text((ba + bb) / 2, yr + 20, caption(experts, k), SMALL, "experts-axis", axis=experts))


def weighted_sum(g: El, cx: float, cy: float, axis: str) -> None:
    g.add(El("g", {"data-role": "weighted-sum", "data-axis": axis},
             [El("circle", {"cx": cx, "cy": cy, "r": 8, "fill": "#ffffff", "stroke": INK, "stroke-width": 1.2}),
              text(cx, cy + 4, "Σ", GLYPH, "weighted-sum-glyph")]))


def stack_shadows(g: El, x0: float, y0: float, x1: float, y1: float, border: str) -> None:
    """Two maps behind a box, offset up and right: a stack of learned maps (one per expert)."""
    for n in (2, 1):
        g.add(El("path", {"d": f"M{num(x0 + n * STACK)} {num(y0 - n * STACK + STACK)} V{num(y0 - n * STACK)} "
                               f"H{num(x1 + n * STACK)} V{num(y1 - n * STACK)} H{num(x1 + n * STACK - STACK)}",
                          "fill": "none", "stroke": border, "stroke-width": 1.1, "data-role": "experts"}))


def _learned(g: El, cx: float, cy: float, sup: str) -> None:
    main, small = text_width("L", GLYPH, True), text_width(sup, SMALL)
    x = cx - (main + small + 1) / 2
    g.add(text(x, cy + 4, "L", GLYPH, "glyph", bold=True, anchor="start"))
    g.add(text(x + main + 1, cy - 1, sup, SMALL, "name", anchor="start"))
