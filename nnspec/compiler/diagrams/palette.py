"""Colours by op family, shared by the block graph and the circuit diagrams, with the legend's wording."""

from __future__ import annotations

# family -> (fill, border, legend text)
FAMILIES: dict[str, tuple[str, str, str]] = {
    "io": ("#ffffff", "#555555", "input / output"),
    "source": ("#eeeeee", "#777777", "index source"),
    "nn": ("#cfe2f3", "#3d6fa8", "learned map"),
    "normalize": ("#d9ead3", "#4d8a3d", "normalisation"),
    "elementwise": ("#fff2cc", "#b8912a", "elementwise"),
    "reduce": ("#fce5cd", "#c0712b", "reduction / softmax"),
    "contract": ("#ead1dc", "#9a4d72", "contraction (einsum)"),
    "shape": ("#f3f3f3", "#888888", "reshape / select"),
    "structure": ("#e1d5f0", "#6a4c9c", "block"),
}
UNKNOWN = ("#f4cccc", "#a33", "other")
# what a transform made or changed (`node.meta["transform"]`): a border and notes in this colour, in both diagrams
TRANSFORM = "#d9480f"
TRANSFORM_LEGEND = "made or changed by a transform"


def colours(family: str) -> tuple[str, str]:
    fill, border, _ = FAMILIES.get(family, UNKNOWN)
    return fill, border


def legend_text(family: str) -> str:
    return FAMILIES.get(family, UNKNOWN)[2]
