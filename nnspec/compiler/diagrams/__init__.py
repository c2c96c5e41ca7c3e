"""Diagrams of a checked model, drawn from the same graph the code is generated from.

- `block_graph`: the block graph as graphviz DOT (hierarchical, collapsible; `dot` lays it out).
- `circuit_svg`: a neural circuit diagram (Abbott, TMLR 2024) as SVG, laid out here, byte-stable.
- `dot_to_svg`, `svg_to_png`: the external steps, raising `ToolMissing` with what to install.
"""

from nnspec.compiler.diagrams.circuit import circuit_svg
from nnspec.compiler.diagrams.dot import block_graph
from nnspec.compiler.diagrams.raster import ToolMissing, dot_to_svg, svg_to_png

__all__ = ["ToolMissing", "block_graph", "circuit_svg", "dot_to_svg", "svg_to_png"]
