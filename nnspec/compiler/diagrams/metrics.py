"""Text widths from a fixed metrics table, so layout never depends on the fonts of the machine that renders.

Advance widths (per 1000 units of font size) of DejaVu Sans and DejaVu Sans Bold, the fonts the SVG asks for
first (`FONT_FAMILY`); Bitstream Vera and Verdana, the fallbacks, have near-identical metrics. A character
outside the table counts as a full em, which overestimates and so never makes text overlap.
"""

from __future__ import annotations

FONT_FAMILY = "DejaVu Sans, Bitstream Vera Sans, Verdana, sans-serif"
ASCENT = 0.76      # of the font size, above the baseline
DESCENT = 0.24     # below it

_CHARS = "".join(chr(c) for c in range(32, 127)) + "×÷−σ√Σ▷⌊⌋≠≤≥∧∨¬⇒◣·…→∑"   # printable ASCII, then symbols
_REGULAR = (
    318, 401, 460, 838, 636, 950, 780, 275, 390, 390, 500, 838, 318, 361, 318, 337, 636, 636, 636, 636, 636,
    636, 636, 636, 636, 636, 337, 337, 838, 838, 838, 531, 1000, 684, 686, 698, 770, 632, 575, 775, 752, 295,
    295, 656, 557, 863, 748, 787, 603, 787, 695, 635, 611, 732, 684, 989, 685, 611, 685, 390, 337, 390, 838,
    500, 500, 613, 635, 550, 635, 615, 352, 635, 634, 278, 278, 579, 278, 974, 634, 612, 635, 635, 411, 521,
    392, 634, 592, 818, 592, 592, 525, 636, 337, 636, 838, 838, 838, 838, 634, 637, 632, 769, 390, 390, 838,
    838, 838, 732, 732, 838, 838, 769, 318, 1000, 838, 674,
)
_BOLD = (
    348, 456, 521, 838, 696, 1002, 872, 306, 457, 457, 523, 838, 380, 415, 380, 365, 696, 696, 696, 696, 696,
    696, 696, 696, 696, 696, 400, 400, 838, 838, 838, 580, 1000, 774, 762, 734, 830, 683, 683, 821, 837, 372,
    372, 775, 637, 995, 837, 850, 733, 850, 770, 720, 682, 812, 774, 1103, 771, 724, 725, 457, 365, 457, 838,
    500, 500, 675, 716, 593, 716, 678, 435, 716, 712, 343, 343, 665, 343, 1042, 712, 687, 716, 716, 493, 595,
    478, 712, 652, 924, 645, 652, 582, 712, 365, 712, 838, 838, 838, 838, 779, 667, 683, 769, 457, 457, 838,
    838, 838, 812, 812, 838, 838, 769, 380, 1000, 838, 718,
)

_WIDTHS = {False: dict(zip(_CHARS, _REGULAR, strict=True)), True: dict(zip(_CHARS, _BOLD, strict=True))}


def text_width(text: str, size: float, bold: bool = False) -> float:
    """The advance width of `text` at font size `size`, in the same units."""
    table = _WIDTHS[bold]
    return sum(table.get(ch, 1000) for ch in text) * size / 1000.0
