"""The external steps of rendering: graphviz's `dot` (DOT -> SVG) and an SVG rasteriser (SVG -> PNG).

PNG goes through a real SVG renderer: CairoSVG when installed (`pip install nnspec[render]`), else librsvg's
`rsvg-convert`. A missing tool raises `ToolMissing`, whose message says what to install.
"""

from __future__ import annotations

import shutil
import subprocess


class ToolMissing(Exception):
    """An external program or package needed for this output format is not installed."""


def dot_to_svg(source: str) -> str:
    exe = shutil.which("dot")
    if exe is None:
        raise ToolMissing("graphviz's `dot` program is not installed (Debian: apt-get install graphviz)")
    done = subprocess.run([exe, "-Tsvg"], input=source.encode(), capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"dot failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode()


def svg_to_png(svg: str, scale: float = 2.0) -> bytes:
    try:
        import cairosvg
    except (ImportError, OSError):   # OSError: the package is there but the cairo library is not
        cairosvg = None
    if cairosvg is not None:
        return bytes(cairosvg.svg2png(bytestring=svg.encode(), scale=scale))
    exe = shutil.which("rsvg-convert")
    if exe is None:
        raise ToolMissing("no SVG rasteriser: install CairoSVG (pip install 'nnspec[render]') or librsvg "
                          "(Debian: apt-get install librsvg2-bin)")
    done = subprocess.run([exe, "--zoom", str(scale), "--format", "png"], input=svg.encode(), capture_output=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rsvg-convert failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout
