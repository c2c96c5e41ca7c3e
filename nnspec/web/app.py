"""The live playground: a Starlette app serving an editor page and checking the spec as it is typed.

- `GET /`: the page (editor with line numbers, dims box, status, diagnostics, the HTML view of `nnspec.web.page`);
  everything inline, nothing fetched from elsewhere.
- `POST /api/check` with `{"spec": text, "sets": "n_layer=2 n_embd=64"}`: the answer of `worker.check_text`.
  Bodies over `MAX_SPEC_BYTES` (plus room for JSON escaping) are refused with 413 before they are read whole;
  a check longer than the time limit is stopped (its process killed) and answered with 503.

Specs are parsed and checked, never run. The server binds loopback unless told otherwise (`nnspec serve --host`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from nnspec.web.page import PAGE, asset, script_json
from nnspec.web.worker import MAX_SPEC_BYTES, CheckTimeout, Worker

MAX_BODY = 2 * MAX_SPEC_BYTES + 4096    # the spec JSON-escaped, and the dims
CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
       "connect-src 'self'")

PLAY_BODY = """<div class="play">
<section class="editor-pane">
  <div class="bar"><b>nnspec playground</b><span id="status"></span></div>
  <div class="bar"><label for="sets">dims</label>
    <input id="sets" placeholder="n_layer=2 n_embd=64 (like --set)" spellcheck="false"></div>
  <div class="editor"><div id="gutter"></div><div id="mark"></div>
    <textarea id="spec" spellcheck="false" autocomplete="off" wrap="off" aria-label="spec"></textarea></div>
  <ul id="diagnostics"></ul>
</section>
<main id="view"></main>
</div>"""

START = """<script>
(function () {{
  var init = JSON.parse(document.getElementById("nnspec-init").textContent);
  document.getElementById("spec").value = init.spec;
  document.getElementById("sets").value = init.sets;
  NNSpec.playground({{api: "api/check", delay: 300}});
}})();
</script>"""


LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


def create_app(spec_text: str, *, spec_path: Path | None = None, sets: str = "", limit_s: float = 10.0,
               allowed_hosts: list[str] | None = None) -> Starlette:
    """The playground for `spec_text` (read from `spec_path`, whose directory its includes resolve against).
    Requests must name one of `allowed_hosts` (default: loopback names) in their Host header, so a web page
    elsewhere cannot reach it through a DNS name rebound to 127.0.0.1."""
    worker = Worker(limit_s)
    name = str(spec_path) if spec_path else "<playground>"
    origin = str(spec_path.resolve()) if spec_path else None

    async def index(request: Request) -> Response:
        init = script_json({"spec": spec_text, "sets": sets})
        # the view page's tail draws a model from embedded data; the playground draws from /api/check instead
        head = PAGE.split("<script type=")[0].format(title="nnspec playground", style=asset("style.css"),
                                                    body=PLAY_BODY)
        html = (f'{head}<script type="application/json" id="nnspec-init">{init}</script>\n'
                f'<script>{asset("app.js")}</script>\n{START.format()}\n</body></html>\n')
        return HTMLResponse(html, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})

    async def check(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return _error(413, f"the request is over {MAX_BODY:,} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return _error(413, f"the request is over {MAX_BODY:,} bytes")
        try:
            data: Any = json.loads(body)
            text, overrides = data["spec"], data.get("sets", "")
            if not isinstance(text, str) or not isinstance(overrides, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _error(400, 'send JSON: {"spec": "<the spec text>", "sets": "name=value ..."}')
        if len(text.encode("utf-8")) > MAX_SPEC_BYTES:
            return _error(413, f"the spec is over {MAX_SPEC_BYTES:,} bytes")
        try:
            answer = await run_in_threadpool(worker.call, text, overrides, name, origin)
        except CheckTimeout as err:
            return _error(503, str(err))
        return JSONResponse(answer, status_code=500 if answer.get("internal") else 200)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(worker.start)    # nnspec imported in the worker before the first keystroke
        try:
            yield
        finally:
            worker.stop()

    app = Starlette(routes=[Route("/", index), Route("/api/check", check, methods=["POST"])], lifespan=lifespan,
                    middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or LOOPBACK_HOSTS)])
    app.state.worker = worker
    return app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"ok": False, "diagnostics": [{"severity": "error", "code": f"HTTP{status}",
                                                       "message": message, "span": None}]}, status_code=status)
