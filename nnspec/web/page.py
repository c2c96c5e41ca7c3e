"""The interactive HTML view of a checked model: one self-contained page, no network.

`payload(result)` is everything the page draws, as JSON-able data: the block tree (`nnspec.web.tree`), the summary
rows `nnspec check` prints, the palette's legend, and a neural circuit diagram (SVG) of the model and of each
block. `page_html(payload)` writes the page: the payload in a `<script type="application/json">`, the page's own
CSS and JavaScript inlined from `nnspec/web/static/`, nothing fetched. The playground (`nnspec.web.app`) serves
the same JavaScript and sends fresh payloads as the spec is edited, so both draw alike.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from nnspec.compiler.check import CheckResult
from nnspec.compiler.diagrams import circuit_svg
from nnspec.compiler.diagrams.palette import FAMILIES, colours, legend_text
from nnspec.compiler.elaborate import UsageError
from nnspec.errors import SpecError
from nnspec.web.tree import flops_text, model_tree


def payload(result: CheckResult) -> dict[str, Any]:
    model = result.model
    tree = model_tree(model)
    families: list[str] = []
    _families(tree, families)
    blocks = list(dict.fromkeys(str(g.meta.get("block", g.name)) for g in model.templates.values()))
    circuits = {"": _circuit(result, None)}
    circuits.update({b: _circuit(result, b) for b in blocks})
    return {
        "name": model.name,
        "source": result.spec.source.name,
        "params": result.params,
        "flops": flops_text(result.flops),
        "free_dims": result.free_dims,
        "inputs": {k: str(model.graph[v].type) for k, v in model.inputs.items()},
        "outputs": {k: str(model.graph[v].type) for k, v in model.outputs.items()},
        "tree": tree,
        "rows": [{"name": r.name, "kind": r.kind, "shape": r.shape, "concrete": r.concrete, "params": r.params,
                  "flops": flops_text(r.flops)} for r in result.rows],
        "legend": [{"family": f, "fill": colours(f)[0], "border": colours(f)[1], "text": legend_text(f)}
                   for f in [*[f for f in FAMILIES if f in families], *[f for f in families if f not in FAMILIES]]],
        "blocks": blocks,
        "circuits": circuits,
    }


def _circuit(result: CheckResult, block: str | None) -> str:
    """The block's circuit diagram, or a sentence saying why there is none (the page shows it instead)."""
    try:
        return circuit_svg(result.model, block=block)
    except (SpecError, UsageError) as err:
        return f"<p class='nodiagram'>no circuit diagram: {_escape(str(err))}</p>"


def _families(items: list[dict[str, Any]], out: list[str]) -> None:
    for item in items:
        if item["family"] not in out:
            out.append(item["family"])
        _families(item.get("children", []), out)


def asset(name: str) -> str:
    """A static file of the page (`app.js`, `style.css`), read from the installed package."""
    return resources.files("nnspec.web").joinpath("static", name).read_text(encoding="utf-8")


def page_html(data: dict[str, Any]) -> str:
    """The self-contained page for `data` (a `payload`)."""
    title = _escape(f"{data['name']} — nnspec")
    return PAGE.format(title=title, style=asset("style.css"), script=asset("app.js"), data=script_json(data),
                       body=VIEW_BODY)


def script_json(data: Any) -> str:
    """JSON safe inside a `<script>` element: `</script>` and comment openers cannot end it early."""
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; \
script-src 'unsafe-inline'; img-src data:; connect-src 'self'">
<title>{title}</title>
<style>{style}</style>
</head><body>
{body}
<script type="application/json" id="nnspec-data">{data}</script>
<script>{script}</script>
<script>NNSpec.renderInto(document.getElementById("view"), JSON.parse(
document.getElementById("nnspec-data").textContent));</script>
</body></html>
"""

VIEW_BODY = '<main id="view"></main>'
