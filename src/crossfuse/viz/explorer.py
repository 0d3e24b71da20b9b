"""The attention explorer: click or hover a word to see its attention heatmap over the image.

Input is a Result's ``extras["explorer"]`` (schema in `crossfuse.lab.result.Result`). The static parts (image,
words, head selector, reference) are rendered here as escaped HTML; the weights travel as JSON embedded in a
``<script type="application/json">`` block (``<``, ``>``, ``&`` written as ``\\u003c``... so no ``</script>``
can close it) and one small inline script (`EXPLORER_SCRIPT`) draws them on a canvas over the image:
colour = magma-like map of weight / max weight, alpha grows with weight, ground-truth boxes on top.
No build step, no network.

Shapes: per example  image_size: [H, W]  grid: [gh, gw]  tokens: T words
        attention[view]: T rows of gh*gw weights  boxes[k].xyxy: [x0, y0, x1, y1] in image pixels
        ->  HTML fragment (a <div class="explorer">).
"""

from __future__ import annotations

import json
import math
import re
from html import escape
from numbers import Real
from typing import Any

from crossfuse.embed import jsonable

_DATA_URI = re.compile(r"data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=\s]*\Z")
_LABELS = {"report": ("generated report", "reference"), "binding": ("question", "answer")}
DISPLAY_PX = 288
"""Displayed width/height (CSS pixels) of the longer image side."""


def embed_json(value: Any) -> str:
    """JSON safe inside a ``<script type="application/json">`` element: no ``</script>``, ``<!--`` or NaN."""
    text = json.dumps(jsonable(value), allow_nan=False, separators=(",", ":"))
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def _is_pair(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)


def example_problems(example: Any) -> list[str]:
    """What is wrong with one explorer example (empty when it can be shown)."""
    if not isinstance(example, dict):
        return [f"example: expected a dict, got {type(example).__name__}"]
    problems = []
    if not _is_pair(example.get("grid")):
        problems.append(f"grid: expected [gh, gw] positive ints, got {example.get('grid')!r}")
    if not _is_pair(example.get("image_size")):
        problems.append(f"image_size: expected [H, W] positive ints, got {example.get('image_size')!r}")
    tokens = example.get("tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        problems.append("tokens: expected a non-empty list of strings")
    attention = example.get("attention")
    if not isinstance(attention, dict) or not attention:
        problems.append("attention: expected a non-empty dict view name -> rows of weights")
    elif not problems:
        cells = example["grid"][0] * example["grid"][1]
        for view, rows in attention.items():
            if not isinstance(rows, list) or len(rows) != len(tokens):
                got = len(rows) if isinstance(rows, list) else type(rows).__name__
                problems.append(f"attention[{view!r}]: expected {len(tokens)} rows (one per token), got {got}")
            elif any(not isinstance(r, list) or len(r) != cells for r in rows):
                problems.append(f"attention[{view!r}]: expected rows of gh*gw = {cells} weights")
            elif any(not isinstance(v, Real) for r in rows for v in r):
                problems.append(f"attention[{view!r}]: expected numbers")
    boxes = example.get("boxes") or []
    if not isinstance(boxes, list):
        return [*problems, f"boxes: expected a list, got {type(boxes).__name__}"]
    for box in boxes:
        xyxy = box.get("xyxy") if isinstance(box, dict) else None
        if not isinstance(xyxy, list | tuple) or len(xyxy) != 4 or not all(isinstance(v, Real) for v in xyxy):
            problems.append(f"boxes: expected {{'label': str, 'xyxy': [x0, y0, x1, y1]}}, got {box!r}"[:200])
    return problems


def _views(example: dict[str, Any]) -> list[str]:
    """Selector order: the example's heatmap ``methods`` (default ``["mean"]``; the first is shown first),
    then the other views (layers/heads) in the order given."""
    attention = example["attention"]
    methods = example.get("methods") or ["mean"]
    first = [m for m in methods if m in attention]
    return first + [v for v in attention if v not in first]


def _example_html(index: int, example: dict[str, Any], labels: tuple[str, str]) -> str:
    height, width = example["image_size"]
    scale = DISPLAY_PX / max(height, width)
    size = f'width="{round(width * scale)}" height="{round(height * scale)}"'
    resolution = max(1, math.ceil(DISPLAY_PX / max(height, width)))  # canvas pixels per image pixel
    image = example.get("image")
    if isinstance(image, str) and _DATA_URI.match(image):
        picture = f'<img class="ex-image" src="{escape(image)}" alt="example {index + 1}" {size}>'
    else:
        picture = f'<div class="ex-image ex-missing" {size}>image missing (expected a data:image URI)</div>'
    options = "".join(f'<option value="{escape(v)}">{escape(v)}</option>' for v in _views(example))
    words = " ".join(
        f'<button type="button" class="tok" data-token="{j}">{escape(token)}</button>'
        for j, token in enumerate(example["tokens"])
    )
    text, reference = str(example.get("text", "")), example.get("reference")
    parts = [
        f'<figure class="ex" data-example="{index}">',
        f'<div class="ex-view" style="width:{round(width * scale)}px;height:{round(height * scale)}px">{picture}',
        f'<canvas class="heat" width="{width * resolution}" height="{height * resolution}"></canvas></div>',
        '<figcaption class="ex-side">',
        f'<label>heatmap <select class="head">{options}</select></label>',
        f'<p class="tokens"><span class="k">{escape(labels[0])}:</span> {words}</p>',
    ]
    if text.split() != list(example["tokens"]):
        parts.append(f'<p class="text"><span class="k">text:</span> {escape(text)}</p>')
    if reference is not None:
        parts.append(f'<p class="ref"><span class="k">{escape(labels[1])}:</span> {escape(str(reference))}</p>')
    parts += [
        '<p class="status" aria-live="polite">hover or click a word</p>',
        '<div class="legend"><span>0</span><i></i><span>max weight</span></div>',
        "</figcaption></figure>",
    ]
    return "".join(parts)


def render_explorer(data: Any) -> str:
    """The explorer for one experiment's ``extras["explorer"]``; malformed examples are reported, not drawn."""
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        return '<p class="note">explorer data malformed: expected {"kind": ..., "examples": [...]}</p>'
    kind = data.get("kind")
    labels = _LABELS.get(kind, ("text", "reference")) if isinstance(kind, str) else ("text", "reference")
    shown, payload, notes = [], [], []
    for i, example in enumerate(data["examples"]):
        problems = example_problems(example)
        if problems:
            notes.append(f"example {i + 1} not shown: " + "; ".join(problems))
            continue
        shown.append(_example_html(len(payload), example, labels))
        keep = ("grid", "image_size", "tokens", "attention")
        payload.append({k: example[k] for k in keep} | {"boxes": example.get("boxes") or []})
    note_html = "".join(f'<p class="note">{escape(n)}</p>' for n in notes)
    if not payload:
        return note_html or '<p class="note">no explorer examples</p>'
    return (
        '<div class="explorer">'
        f'<script type="application/json" class="explorer-data">{embed_json({"examples": payload})}</script>'
        f"{note_html}{''.join(shown)}</div>"
    )


EXPLORER_CSS = """
.explorer{display:flex;flex-direction:column;gap:1.2em}
.ex{display:flex;flex-wrap:wrap;gap:1.2em;margin:0;align-items:flex-start}
.ex-view{position:relative;flex:none;background:#222}
.ex-view img,.ex-view canvas,.ex-view .ex-missing{position:absolute;left:0;top:0;width:100%;height:100%;
  image-rendering:pixelated}
.ex-missing{color:#ccc;font-size:.8em;padding:.5em;box-sizing:border-box}
.ex-side{flex:1;min-width:16em;max-width:40em}
.tok{font:inherit;border:1px solid #bbb;background:#f7f7f7;border-radius:3px;padding:0 .3em;margin:.1em 0;
  cursor:pointer}
.tok:hover,.tok:focus{background:#ffe9a8}
.tok.pinned{background:#fbbc05;border-color:#a07400}
.k{color:#666;font-size:.9em}
.status{font-family:ui-monospace,monospace;font-size:.85em;min-height:1.3em}
.legend{display:flex;align-items:center;gap:.4em;font-size:.8em;color:#555}
.legend i{display:inline-block;width:10em;height:.8em;
  background:linear-gradient(90deg,#000004,#51127c,#b73779,#fc8961,#fcfdbf)}
"""

EXPLORER_SCRIPT = """
(function () {
  "use strict";
  var STOPS = [[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]];  // magma
  function colour(t) {
    t = Math.min(1, Math.max(0, t)) * (STOPS.length - 1);
    var i = Math.min(STOPS.length - 2, Math.floor(t)), f = t - i, a = STOPS[i], b = STOPS[i + 1];
    return [0, 1, 2].map(function (k) { return Math.round(a[k] + f * (b[k] - a[k])); });
  }
  function setup(root) {
    var data = JSON.parse(root.querySelector("script.explorer-data").textContent);
    root.querySelectorAll("figure.ex").forEach(function (fig) {
      var ex = data.examples[Number(fig.dataset.example)];
      var canvas = fig.querySelector("canvas.heat"), select = fig.querySelector("select.head");
      var status = fig.querySelector(".status"), buttons = fig.querySelectorAll(".tok");
      var pinned = null, hovered = null;
      function draw() {
        var tok = hovered !== null ? hovered : pinned, ctx = canvas.getContext("2d");
        var gh = ex.grid[0], gw = ex.grid[1], H = ex.image_size[0], W = ex.image_size[1];
        var sx = canvas.width / W, sy = canvas.height / H, cw = canvas.width / gw, ch = canvas.height / gh;
        ctx.clearRect(0, 0, canvas.width, canvas.height);
        var text = "hover or click a word";
        if (tok !== null) {
          var row = ex.attention[select.value][tok].map(function (v) { return Number(v) || 0; });
          var max = Math.max.apply(null, row.concat([1e-12])), best = row.indexOf(max), inside = 0, total = 0;
          for (var r = 0; r < gh; r++) for (var c = 0; c < gw; c++) {
            var v = row[r * gw + c] / max, rgb = colour(v);
            var x0 = Math.round(c * cw), y0 = Math.round(r * ch);  // exact edges: no seams, no gaps
            ctx.fillStyle = "rgba(" + rgb.join(",") + "," + (0.1 + 0.6 * v).toFixed(3) + ")";
            ctx.fillRect(x0, y0, Math.round((c + 1) * cw) - x0, Math.round((r + 1) * ch) - y0);
            var x = (c + 0.5) * W / gw, y = (r + 0.5) * H / gh;
            total += row[r * gw + c];
            if (ex.boxes.some(function (b) {
              return x >= b.xyxy[0] && x <= b.xyxy[2] && y >= b.xyxy[1] && y <= b.xyxy[3];
            })) inside += row[r * gw + c];
          }
          text = JSON.stringify(ex.tokens[tok]) + " | " + select.value + " | max " + max.toFixed(3) +
            " at patch (" + Math.floor(best / gw) + ", " + (best % gw) + ")";
          if (ex.boxes.length && total > 0) text += " | share in boxes " + (100 * inside / total).toFixed(0) + "%";
        }
        ctx.lineWidth = Math.max(1.5, canvas.width / 150);
        ctx.font = Math.max(10, Math.round(canvas.width / 24)) + "px sans-serif";
        ex.boxes.forEach(function (b) {
          var x0 = b.xyxy[0] * sx, y0 = b.xyxy[1] * sy;
          ctx.strokeStyle = "#00e5ff";
          ctx.strokeRect(x0, y0, (b.xyxy[2] - b.xyxy[0]) * sx, (b.xyxy[3] - b.xyxy[1]) * sy);
          ctx.fillStyle = "#00e5ff";
          ctx.fillText(String(b.label === undefined ? "" : b.label), x0 + 2, Math.max(y0 - 3, 12));
        });
        buttons.forEach(function (b, j) { b.classList.toggle("pinned", j === pinned); });
        canvas.dataset.token = tok === null ? "" : ex.tokens[tok];
        canvas.dataset.tokenIndex = tok === null ? "" : String(tok);
        canvas.dataset.view = select.value;
        status.textContent = text;
      }
      buttons.forEach(function (b) {
        var j = Number(b.dataset.token);
        b.addEventListener("mouseenter", function () { hovered = j; draw(); });
        b.addEventListener("mouseleave", function () { hovered = null; draw(); });
        b.addEventListener("click", function () { pinned = pinned === j ? null : j; hovered = null; draw(); });
      });
      select.addEventListener("change", draw);
      draw();
    });
  }
  document.querySelectorAll(".explorer").forEach(setup);
})();
"""
