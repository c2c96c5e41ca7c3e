"""`nnspec serve`'s app over real HTTP (uvicorn on a free loopback port): checks located at the line the mistake
was planted on, dim overrides, request size and time limits, and the command's loopback default."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request

import pytest
from typer.testing import CliRunner

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from nnspec.cli import app as cli_app
from nnspec.commands.serve import STARTER
from nnspec.web.app import MAX_BODY, create_app
from nnspec.web.server import serving
from nnspec.web.worker import MAX_SPEC_BYTES

FC1 = "    h = relu(linear(x, d_hidden, name=fc1))"
FC1_LINE = STARTER.splitlines().index(FC1) + 1


def _params(d_in: int, d_hidden: int, d_out: int) -> int:
    return d_in * d_hidden + d_hidden + d_hidden * d_out + d_out     # two linears with bias, by hand


@pytest.fixture(scope="module")
def server():
    app = create_app(STARTER, limit_s=30.0)
    with serving(app) as url:
        yield url, app


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/api/check", data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def _check(url: str, spec: str, sets: str = "") -> tuple[int, dict]:
    return _post(url, json.dumps({"spec": spec, "sets": sets}).encode())


def test_page_is_served_with_its_script_and_no_network(server):
    url, _ = server
    with urllib.request.urlopen(url + "/", timeout=30) as r:
        html = r.read().decode()
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert '<textarea id="spec"' in html and "NNSpec.playground" in html
    assert json.dumps(STARTER)[1:40] in html.replace("\\u003c", "<").replace("\\u003e", ">")


def test_check_answers_the_model_and_located_errors(server):
    url, _ = server
    status, res = _check(url, STARTER)
    assert status == 200 and res["ok"] and res["model"]["params"] == _params(64, 256, 10)
    status, res = _check(url, STARTER, "d_hidden=128")
    assert res["ok"] and res["model"]["params"] == _params(64, 128, 10)
    status, res = _check(url, STARTER.replace(FC1, FC1.replace("linear(", "lineaar(")))
    assert status == 200 and not res["ok"]
    (d,) = res["diagnostics"]
    assert d["span"]["line"] == FC1_LINE and d["span"]["col"] == FC1.index("linear") + 1
    assert "lineaar" in d["message"]
    status, res = _check(url, STARTER, "no_such_dim=3")
    assert not res["ok"] and "no_such_dim" in res["diagnostics"][0]["message"]


def test_limits_request_size_and_shape(server):
    url, _ = server
    # a declared length over the limit is refused before the body is read (only its first bytes are sent)
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/api/check")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(MAX_BODY + 1))
    conn.endheaders(b'{"spec": "')
    reply = conn.getresponse()
    assert reply.status == 413 and not json.load(reply)["ok"]
    conn.close()
    status, res = _check(url, "#" * (MAX_SPEC_BYTES + 1))    # within the body limit, over the spec limit
    assert status == 413 and "spec is over" in res["diagnostics"][0]["message"]
    status, res = _post(url, b"{not json")
    assert status == 400
    status, res = _post(url, json.dumps({"spec": 3}).encode())
    assert status == 400
    # a request naming another host (a DNS name rebound to 127.0.0.1 by some web page) is refused
    req = urllib.request.Request(url + "/", headers={"Host": "attacker.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    assert refused.value.code == 400


def test_a_check_over_the_time_limit_is_stopped(server):
    url, app = server
    worker = app.state.worker
    worker.limit_s = 0.001          # no check of a spec finishes in a millisecond of a separate process
    try:
        status, res = _check(url, STARTER)
        assert status == 503 and "longer than" in res["diagnostics"][0]["message"]
        assert worker._proc is None     # killed, not left running
    finally:
        worker.limit_s = 60.0


@pytest.mark.slow
def test_after_a_stopped_check_a_fresh_worker_answers(server):
    url, app = server
    app.state.worker.limit_s = 0.001
    assert _check(url, STARTER)[0] == 503
    app.state.worker.limit_s = 60.0
    status, res = _check(url, STARTER)    # a fresh worker took over (it starts in a few seconds)
    assert status == 200 and res["ok"]


def test_serve_binds_loopback_unless_told(monkeypatch, tmp_path):
    import uvicorn

    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    spec = tmp_path / "m.yaml"
    spec.write_text(STARTER)
    res = CliRunner().invoke(cli_app, ["serve", str(spec), "--port", "0"])
    assert res.exit_code == 0, res.output
    assert seen["host"] == "127.0.0.1" and "warning" not in res.output
    res = CliRunner().invoke(cli_app, ["serve", str(spec), "--host", "0.0.0.0"])
    assert res.exit_code == 0 and seen["host"] == "0.0.0.0" and "other machines can reach" in res.output
    res = CliRunner().invoke(cli_app, ["serve", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2
