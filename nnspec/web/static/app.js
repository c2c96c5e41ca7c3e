// nnspec's HTML view and playground. No dependencies, no network except the playground's own /api/check.
// Text from the spec is only ever inserted with textContent; the SVGs inserted as markup are nnspec's own output
// (its SVG writer escapes every name).
"use strict";
var NNSpec = (function () {
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(n) { return Number(n).toLocaleString("en-US"); }

  // -- the block graph: items top to bottom, blocks and repeats collapsible in place --
  function drawItems(items, into, ctx, prevShape) {
    var shape = prevShape;
    items.forEach(function (item, k) {
      var prevId = k > 0 ? items[k - 1].id : null;
      var extra = item.inputs.filter(function (i) { return i !== prevId; });
      if (extra.length && item.kind !== "input") {   // an edge from further up: a residual or a skip
        var skip = el("div", {"class": "skip", "data-role": "edge"});
        skip.textContent = "\u21b3 " + extra.map(function (i) { return ctx.labels[i] || i; }).join(", ");
        into.appendChild(skip);
      }
      var box = item.children ? drawBlock(item, ctx, shape) : drawNode(item, ctx);
      into.appendChild(box);
      // the edge out of an op carries its shape once, where the shape changes (an input shows it in its box)
      if (item.shape !== shape && item.kind !== "input" && item.kind !== "output") {
        into.appendChild(el("div", {"class": "shape", "data-role": "shape", "data-of": item.id}, item.shape + (
          item.dtype !== "float32" && item.dtype !== "int64" && item.dtype !== "bool" ? " " + item.dtype : "")));
      }
      shape = item.shape;
    });
  }
  function drawNode(item, ctx) {
    var box = el("div", {"class": "node fam-" + item.family, "data-id": item.id, "data-kind": item.kind,
                         "tabindex": "0"});
    box.style.background = ctx.fill[item.family] || "#fff";
    box.style.borderColor = ctx.border[item.family] || "#555";
    box.appendChild(el("span", {"class": "label"}, item.label));
    if (item.op !== item.label && item.kind !== "input") {
      box.appendChild(el("span", {"class": "op"}, item.op + (item.consts ? " " + item.consts.join(", ") : "")));
    }
    if (item.kind === "input") box.appendChild(el("span", {"class": "op"}, item.shape));
    if (item.params) box.appendChild(el("span", {"class": "params"}, fmt(item.params) + " params"));
    if (item.tied) box.appendChild(el("span", {"class": "params"}, "tied to " + item.tied.join(", ")));
    hover(box, item, ctx);
    return box;
  }
  function drawBlock(item, ctx, shape) {
    var wrap = el("div", {"class": "block collapsed", "data-id": item.id, "data-kind": item.kind,
                          "data-block": item.block});
    var head = el("div", {"class": "block-head", "tabindex": "0"});
    var toggle = el("button", {"class": "toggle", "type": "button", "aria-expanded": "false",
                               "title": "expand / collapse"}, "\u25b8");
    head.appendChild(toggle);
    head.appendChild(el("span", {"class": "label"}, item.label + (item.kind === "repeat" ? " \u00d7" + item.count : "")));
    head.appendChild(el("span", {"class": "op"}, item.block + (item.shared ? " (shared)" : "")));
    head.appendChild(el("span", {"class": "params"}, fmt(item.params) + " params"));
    wrap.appendChild(head);
    var body = el("div", {"class": "children"});
    wrap.appendChild(body);
    var drawn = false;
    function setOpen(open) {
      if (open && !drawn) {   // drawn on first expansion: a 96-layer model's page stays small
        drawItems(item.children, body, ctx, shape);
        if (item.loop && item.loop.length) {
          body.appendChild(el("div", {"class": "loop", "data-role": "loop"},
            "\u21ba \u00d7" + item.count + ": " + (ctx.labels[item.loop[0]] || item.loop[0]) + " feeds the next " +
            "iteration's " + (ctx.labels[item.loop[1]] || item.loop[1])));
        }
        drawn = true;
      }
      wrap.classList.toggle("collapsed", !open);
      toggle.textContent = open ? "\u25be" : "\u25b8";
      toggle.setAttribute("aria-expanded", open ? "true" : "false");
    }
    toggle.addEventListener("click", function (ev) {
      ev.stopPropagation();
      setOpen(wrap.classList.contains("collapsed"));
    });
    head.addEventListener("click", function () { ctx.select(item.block, item.label); });
    hover(head, item, ctx);
    return wrap;
  }
  function hover(target, item, ctx) {
    function show() {
      var info = ctx.info;
      info.textContent = "";
      info.setAttribute("data-id", item.id);
      info.appendChild(el("b", {}, item.label));
      var facts = [["op", item.op + (item.block ? " (" + item.block + ")" : "")], ["shape", item.shape],
                   ["dtype", item.dtype], ["params", fmt(item.params)], ["FLOPs", item.flops]];
      if (item.line) facts.push(["spec line", String(item.line)]);
      var dl = el("dl");
      facts.forEach(function (f) {
        dl.appendChild(el("dt", {}, f[0]));
        dl.appendChild(el("dd", {"data-fact": f[0]}, f[1]));
      });
      info.appendChild(dl);
    }
    target.addEventListener("mouseenter", show);
    target.addEventListener("focus", show);
  }
  function collectLabels(items, out) {
    items.forEach(function (i) { out[i.id] = i.label; if (i.children) collectLabels(i.children, out); });
    return out;
  }

  function drawTable(data) {
    var table = el("table", {"class": "summary", "id": "summary"});
    var head = el("tr");
    ["name", "block / op", "shape", "concrete", "params", "FLOPs"].forEach(function (h) {
      head.appendChild(el("th", {}, h));
    });
    table.appendChild(head);
    data.rows.concat([{name: "total", kind: "", shape: "", concrete: "", params: data.params,
                       flops: data.flops}]).forEach(function (r) {
      var tr = el("tr");
      [r.name, r.kind, r.shape, r.concrete, fmt(r.params), r.flops].forEach(function (v, k) {
        tr.appendChild(el("td", k >= 4 ? {"class": "num"} : {}, v));
      });
      table.appendChild(tr);
    });
    return table;
  }
  function drawLegend(data) {
    var box = el("div", {"class": "legend", "id": "legend"});
    data.legend.forEach(function (f) {
      var sw = el("span", {"class": "swatch", "data-family": f.family}, f.text);
      sw.style.background = f.fill;
      sw.style.borderColor = f.border;
      box.appendChild(sw);
    });
    return box;
  }

  // Draws a payload into `root`, replacing what was there; keeps which blocks were open and which is selected.
  function renderInto(root, data) {
    var open = Array.prototype.map.call(root.querySelectorAll(".block:not(.collapsed)"),
                                        function (b) { return b.getAttribute("data-id"); });
    var selected = root.getAttribute("data-selected") || "";
    root.textContent = "";
    var fill = {}, border = {};
    data.legend.forEach(function (f) { fill[f.family] = f.fill; border[f.family] = f.border; });
    var title = el("h1", {}, data.name);
    title.appendChild(el("small", {}, "  " + fmt(data.params) + " params \u00b7 FLOPs " + data.flops));
    root.appendChild(title);
    var grid = el("div", {"class": "grid"});
    var graph = el("section", {"class": "graph", "id": "graph"});
    graph.appendChild(el("h2", {}, "block graph"));
    graph.appendChild(drawLegend(data));
    var side = el("section", {"class": "side"});
    var info = el("div", {"class": "info", "id": "info"}, "hover over a node to see its shape, dtype, parameters " +
                  "and FLOPs; click a block to see its circuit diagram");
    var circuitHead = el("h2", {"id": "circuit-title"});
    var circuit = el("div", {"class": "circuit", "id": "circuit"});
    function select(block, label) {
      if (!(block in data.circuits)) block = "";
      root.setAttribute("data-selected", block);
      circuitHead.textContent = "circuit diagram: " + (block ? label + " (" + block + ")" : data.name);
      circuit.innerHTML = data.circuits[block];
      circuit.setAttribute("data-block", block);
    }
    var ctx = {fill: fill, border: border, info: info, select: select, labels: collectLabels(data.tree, {})};
    var flow = el("div", {"class": "flow"});
    drawItems(data.tree, flow, ctx, null);
    graph.appendChild(flow);
    side.appendChild(info);
    side.appendChild(circuitHead);
    side.appendChild(circuit);
    grid.appendChild(graph);
    grid.appendChild(side);
    root.appendChild(grid);
    root.appendChild(el("h2", {}, "summary"));
    root.appendChild(drawTable(data));
    open.forEach(function (id) {   // re-open what was open, outermost first (inner blocks exist once it is drawn)
      var b = root.querySelector('.block[data-id="' + CSS.escape(id) + '"]');
      if (b) b.querySelector(".toggle").click();
    });
    select(selected, selected);
  }

  // -- the playground: edit, check as you type, errors located in the editor --
  function playground(opts) {
    var editor = document.getElementById("spec"), view = document.getElementById("view");
    var sets = document.getElementById("sets"), status = document.getElementById("status");
    var diag = document.getElementById("diagnostics"), mark = document.getElementById("mark");
    var gutter = document.getElementById("gutter");
    var timer = null, seq = 0;
    function lineHeight() { return parseFloat(getComputedStyle(editor).lineHeight) || 18; }
    function numberLines(errLine) {
      var n = editor.value.split("\n").length;
      gutter.textContent = "";
      for (var i = 1; i <= n; i++) {
        gutter.appendChild(el("div", i === errLine ? {"class": "err-line", "data-line": String(i)} :
                              {"data-line": String(i)}, String(i)));
      }
      gutter.scrollTop = editor.scrollTop;
    }
    function placeMark() {
      var line = Number(mark.getAttribute("data-line") || 0);
      mark.style.display = line ? "block" : "none";
      var pad = parseFloat(getComputedStyle(editor).paddingTop) || 0;
      mark.style.top = (editor.offsetTop + pad + (line - 1) * lineHeight() - editor.scrollTop) + "px";
    }
    function showDiagnostics(list) {
      diag.textContent = "";
      var first = list.length && list[0].span ? list[0].span.line : 0;
      mark.setAttribute("data-line", String(first));
      numberLines(first);
      placeMark();
      list.forEach(function (d) {
        var where = d.span ? "line " + d.span.line + ", col " + d.span.col + ": " : "";
        var item = el("li", {"class": "diagnostic " + (d.severity || "error"), "data-line":
                             d.span ? String(d.span.line) : ""}, where + (d.code ? "[" + d.code + "] " : "") + d.message);
        if (d.span) item.addEventListener("click", function () { goTo(d.span.line, d.span.col); });
        diag.appendChild(item);
      });
    }
    function goTo(line, col) {
      var lines = editor.value.split("\n"), pos = 0;
      for (var i = 0; i < line - 1 && i < lines.length; i++) pos += lines[i].length + 1;
      editor.focus();
      editor.setSelectionRange(pos + col - 1, pos + (lines[line - 1] || "").length);
    }
    function check() {
      var mine = ++seq;
      status.textContent = "checking\u2026";
      status.className = "busy";
      fetch(opts.api, {method: "POST", headers: {"Content-Type": "application/json"},
                       body: JSON.stringify({spec: editor.value, sets: sets.value})})
        .then(function (r) { return r.json(); })
        .then(function (res) {
          if (mine !== seq) return;   // an older answer arriving late is dropped
          showDiagnostics(res.diagnostics || []);
          if (res.ok) {
            status.textContent = "ok \u2014 " + fmt(res.model.params) + " params";
            status.className = "ok";
            renderInto(view, res.model);
          } else {
            status.textContent = (res.diagnostics || []).length + " error(s)";
            status.className = "error";
          }
        })
        .catch(function (e) { if (mine === seq) { status.textContent = "server: " + e; status.className = "error"; } });
    }
    function later() { clearTimeout(timer); timer = setTimeout(check, opts.delay || 300); numberLines(0); }
    editor.addEventListener("input", later);
    sets.addEventListener("input", later);
    editor.addEventListener("scroll", function () { gutter.scrollTop = editor.scrollTop; placeMark(); });
    numberLines(0);
    check();
  }
  return {renderInto: renderInto, playground: playground};
})();
