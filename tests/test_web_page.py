"""The HTML view's data and page (`nnspec render --format html`): names from the spec, parameter counts against a
`transformers` GPT-2 built from the same small config (random weights, nothing downloaded), a page that fetches
nothing, and the CLI writing it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nnspec.cli import app
from nnspec.pipeline import Pipeline
from nnspec.web.page import page_html, payload
from nnspec.web.tree import model_tree

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 101, "n_positions": 32}


@pytest.fixture(scope="module")
def gpt2():
    return Pipeline(ROOT / "examples" / "gpt2.yaml", overrides=SMALL).checked


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("children", []))


def _find(items, label, kind=None):
    return next(i for i in _walk(items) if i["label"] == label and (kind is None or i["kind"] == kind))


def test_items_carry_the_specs_names_not_ssa_names(gpt2):
    labels = [i["label"] for i in _walk(model_tree(gpt2.model))]
    # the variables of the spec's statements (tok, pos, qkv, the split's q, k, v) and the layers' scopes
    for name in ("tok", "pos", "qkv", "q", "k", "v", "ln_1", "ln_2", "attn", "mlp", "c_proj", "c_fc"):
        assert name in labels, name
    assert not [x for x in labels if re.search(r"_\d+$", x) and x not in ("ln_1", "ln_2")], labels


def test_ids_are_unique_and_edges_point_at_items(gpt2):
    items = list(_walk(model_tree(gpt2.model)))
    ids = [i["id"] for i in items]
    assert len(ids) == len(set(ids))
    for item in items:
        assert set(item["inputs"]) <= set(ids), item


def test_parameters_sit_on_the_ops_that_own_them(gpt2):
    # GPT-2's parameter counts by hand (d = n_embd, V vocabulary, P positions): c_attn d x 3d + 3d, a layer norm 2d,
    # a layer 12 d^2 + 13 d (c_attn 3d^2+3d, c_proj d^2+d, c_fc 4d^2+4d, mlp c_proj 4d^2+d, two norms 4d)
    d, vocab, pos = SMALL["n_embd"], SMALL["vocab_size"], SMALL["n_positions"]
    tree = model_tree(gpt2.model)
    assert _find(tree, "tok")["params"] == vocab * d
    assert _find(tree, "pos")["params"] == pos * d
    assert _find(tree, "qkv")["params"] == 3 * d * d + 3 * d
    assert _find(tree, "ln_1")["params"] == 2 * d
    assert _find(tree, "c_fc")["params"] == 4 * d * d + 4 * d
    repeat = next(i for i in tree if i["kind"] == "repeat")
    assert repeat["count"] == 2
    assert repeat["params"] == 2 * (12 * d * d + 13 * d)
    # views, selects and elementwise ops own nothing
    assert all(i["params"] == 0 for i in _walk(tree) if i["op"] in ("rearrange", "select", "add", "softmax"))
    # the tied head counts nothing again: the top level adds up to the model's unique parameters (+ ln_f)
    assert sum(i["params"] for i in tree) == vocab * d + pos * d + 2 * (12 * d * d + 13 * d) + 2 * d


def test_repeat_draws_its_loop_back(gpt2):
    repeat = next(i for i in model_tree(gpt2.model) if i["kind"] == "repeat")
    last, first = repeat["loop"]
    assert first == repeat["children"][0]["id"] and repeat["children"][0]["kind"] == "input"
    # the iteration's result is the residual add after the MLP, the last value computed in the block
    assert last in {c["id"] for c in _walk(repeat["children"])}
    assert _find(repeat["children"], "mlp", "call")["id"] in next(
        c for c in repeat["children"] if c["id"] == last)["inputs"]


def test_page_is_self_contained_and_carries_the_payload(gpt2):
    data = payload(gpt2)
    html = page_html(data)
    # nothing loaded from elsewhere: no src/href to a URL, no @import or url() fetch
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and not re.search(r"url\(\s*['\"]?(https?:)?//", html)
    assert "default-src 'none'" in html
    embedded = re.search(r'<script type="application/json" id="nnspec-data">(.*?)</script>', html, re.S)
    assert embedded and json.loads(embedded.group(1)) == json.loads(json.dumps(data))
    assert set(data["circuits"]) == {"", "attention", "mlp", "layer"}
    assert all(svg.startswith("<svg") or "<svg" in svg[:200] for svg in data["circuits"].values())
    assert data["params"] == sum(r["params"] for r in data["rows"]) - sum(
        r["params"] for r in data["rows"] if "tied" in r["kind"])


def test_script_json_cannot_close_the_script():
    hostile = {"name": "</script><script>alert(1)</script>", "n": "<!--"}
    data = payload(Pipeline(ROOT / "examples" / "gpt2.yaml", overrides=SMALL).checked)
    data["name"] = hostile["name"]
    html = page_html(data)
    assert html.count("</script>") == 3     # the data, the app, the start-up; none from the name
    assert hostile["name"] not in html


def test_render_html_cli(tmp_path):
    out = tmp_path / "gpt2.html"
    res = CliRunner().invoke(app, ["render", str(ROOT / "examples" / "gpt2.yaml"), "--set", "n_layer=2",
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and "NNSpec.renderInto" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "examples" / "gpt2.yaml").read_text().replace("n_embd: 768", "n_embd: 770"))
    res = CliRunner().invoke(app, ["render", str(bad), "-o", str(tmp_path / "bad.html")])
    assert res.exit_code == 1 and not (tmp_path / "bad.html").exists()
