"""The lab's HTML report: one self-contained page rendered from a run's ``results.json``.

Summary table (claim, criterion, measured, verdict badge), a section per experiment (tables, figures as
base64 data URIs, the attention explorer, raw numbers, or the error and traceback of a failed run) and the
environment for reproducibility. Every string from results, config or user data is HTML-escaped; a
Content-Security-Policy allows only the page's own script (by hash) and data: images, so the page makes
no network request and an injected ``<script>`` would not run even if escaping were missed.

Shapes: ``render_report(record, figures)``  record: the ``results.json`` dict,
        figures: {experiment name: {figure name: PNG bytes}}  ->  HTML text.
"""

from __future__ import annotations

import base64
import hashlib
import json
from html import escape
from pathlib import Path
from typing import Any

from crossfuse.atomic import atomic_write_text
from crossfuse.viz.explorer import EXPLORER_CSS, EXPLORER_SCRIPT, render_explorer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_BADGE = {"supported": "ok", "not supported": "bad", "inconclusive": "unk", "failed": "fail"}
_ENV_ORDER = ["date", "size", "seed", "num_seeds", "python", "torch", "numpy", "crossfuse", "cpu", "cpu_count"]

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:74em;padding:1em 1.5em;
  color:#1d1d1d}
h1{margin-bottom:.2em} h2{margin-top:2.2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.sub{color:#555;margin-top:0}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}
th,td{border:1px solid #d8d8d8;padding:.3em .55em;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
caption{text-align:left;font-weight:600;padding:.2em 0}
.badge{display:inline-block;border-radius:1em;padding:0 .65em;font-size:.85em;font-weight:600;color:#fff;
  white-space:nowrap}
.badge.ok{background:#1e8e3e}.badge.bad{background:#c5221f}.badge.unk{background:#80868b}
.badge.fail{background:#5f0a87}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em} dl.facts dt{color:#555}
dl.facts dd{margin:0}
pre{background:#f6f6f6;border:1px solid #e2e2e2;padding:.6em;overflow:auto;font-size:.82em;max-height:30em}
.error{color:#a50e0e;font-weight:600} .note{color:#8a5300}
.figs{display:flex;flex-wrap:wrap;gap:1em} .figs figure{margin:0} .figs img{max-width:100%;height:auto}
.figs figcaption{font-size:.85em;color:#555}
.banner{background:#fff4e5;border:1px solid #f0b45a;padding:.5em .8em}
"""


def _text(value: Any) -> str:
    """Escaped display text of a value (None shown as a dash)."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return escape(format(value, ".6g"))
    return escape(str(value))


def _cell(value: Any) -> str:
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return f'<td class="num">{_text(value)}</td>' if numeric else f"<td>{_text(value)}</td>"


def _badge(status: str) -> str:
    return f'<span class="badge {_BADGE.get(status, "unk")}">{escape(status)}</span>'


def _status(experiment: dict[str, Any]) -> str:
    result = experiment.get("result")
    if experiment.get("status") != "ok" or not isinstance(result, dict):
        return "failed"
    return str(result.get("verdict", "inconclusive"))


def _anchor(index: int) -> str:
    return f"exp-{index}"


def _table(table: Any) -> str:
    if not isinstance(table, dict):
        return f'<p class="note">table not shown: expected a Table record, got {escape(type(table).__name__)}</p>'
    head = "".join(f"<th>{_text(c)}</th>" for c in table.get("columns") or [])
    rows = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in table.get("rows") or [])
    return f"<table><caption>{_text(table.get('title', ''))}</caption><thead><tr>{head}</tr></thead>{rows}</table>"


def _figures(names: list[str], figures: dict[str, bytes]) -> str:
    items = []
    for name in names:
        data = figures.get(name)
        if data is None:
            items.append(f'<p class="note">figure {_text(name)}: file not found</p>')
        elif not data.startswith(PNG_MAGIC):
            items.append(f'<p class="note">figure {_text(name)}: not a PNG, not embedded</p>')
        else:
            uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            caption = f"<figcaption>{_text(name)}</figcaption>"
            items.append(f'<figure><img src="{uri}" alt="{_text(name)}">{caption}</figure>')
    return f'<div class="figs">{"".join(items)}</div>' if items else ""


def _summary(experiments: list[dict[str, Any]]) -> str:
    rows = []
    for i, exp in enumerate(experiments):
        result = exp.get("result") if isinstance(exp.get("result"), dict) else {}
        measured = result.get("measured") if result else exp.get("error")
        rows.append(
            f'<tr><td><a href="#{_anchor(i)}">{_text(exp.get("name"))}</a></td><td>{_text(result.get("claim"))}</td>'
            f"<td>{_text(_precondition(result))}</td>"
            f"<td>{_text(result.get('criterion'))}</td><td>{_text(measured)}</td><td>{_badge(_status(exp))}</td>"
            f"{_cell(round(float(exp.get('wall_time_s') or 0.0), 1))}</tr>"
        )
    head = (
        "<tr><th>experiment</th><th>claim</th><th>precondition (measured)</th><th>criterion</th><th>measured</th>"
        "<th>verdict</th><th>time (s)</th>"
    )
    return f'<table class="summary"><thead>{head}</tr></thead>{"".join(rows)}</table>'


def _precondition(result: dict[str, Any]) -> str | None:
    """The precondition with its measured figure and whether it held ("met" / "NOT met"), or None."""
    text, figure, met = result.get("precondition"), result.get("precondition_measured"), result.get("precondition_met")
    if not text:
        return None
    state = "" if met is None else (" (met)" if met else " (NOT met: verdict inconclusive)")
    return f"{text} Measured: {figure}{state}" if figure else text


def _section(index: int, exp: dict[str, Any], figures: dict[str, bytes]) -> str:
    name, status = exp.get("name"), _status(exp)
    parts = [f'<section id="{_anchor(index)}"><h2>{_text(name)} {_badge(status)}</h2>']
    result = exp.get("result") if isinstance(exp.get("result"), dict) else None
    facts = [("time", f"{float(exp.get('wall_time_s') or 0.0):.1f} s"), ("log", exp.get("log"))]
    if result is not None:
        seeds = ", ".join(str(s) for s in result.get("seeds") or []) or None
        facts = [
            ("claim", result.get("claim")),
            ("precondition", _precondition(result)),
            ("criterion", result.get("criterion")),
            ("measured", result.get("measured")),
            ("size", result.get("size")),
            ("seeds", seeds),
            *facts,
        ]
    parts.append('<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{_text(v)}</dd>" for k, v in facts) + "</dl>")
    parts += [f'<p class="note">warning: {_text(w)}</p>' for w in exp.get("warnings") or []]
    if status == "failed":
        parts.append(f'<p class="error">failed: {_text(exp.get("error"))}</p>')
        if exp.get("traceback"):
            parts.append(f"<details open><summary>traceback</summary><pre>{_text(exp['traceback'])}</pre></details>")
    if result is not None:
        parts += [_table(t) for t in result.get("tables") or []]
        parts.append(_figures(list(result.get("figures") or []), figures))
        explorer = (result.get("extras") or {}).get("explorer")
        if explorer is not None:
            parts.append("<h3>attention explorer</h3>" + render_explorer(explorer))
        raw = json.dumps(result.get("raw"), indent=1, default=str)
        parts.append(f"<details><summary>raw numbers</summary><pre>{_text(raw)}</pre></details>")
    return "".join(parts) + "</section>"


def _environment(env: dict[str, Any]) -> str:
    keys = [k for k in _ENV_ORDER if k in env] + sorted(k for k in env if k not in _ENV_ORDER)
    rows = "".join(f"<tr><th>{_text(k)}</th><td>{_text(env[k])}</td></tr>" for k in keys)
    return f'<section id="environment"><h2>environment</h2><table>{rows}</table></section>'


def render_report(record: dict[str, Any], figures: dict[str, dict[str, bytes]] | None = None) -> str:
    """The whole page for a ``results.json`` record; ``figures[experiment][figure name]`` are PNG bytes."""
    figures = figures or {}
    experiments = list(record.get("experiments") or [])
    env = record.get("environment") or {}
    counts: dict[str, int] = {}
    for exp in experiments:
        counts[_status(exp)] = counts.get(_status(exp), 0) + 1
    tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no experiments"
    sub = (
        f"size {_text(record.get('size'))} · seed {_text(record.get('seed'))} · {_text(env.get('date'))} · "
        f"{len(experiments)} experiments: {escape(tally)} · total {float(record.get('wall_time_s') or 0):.1f} s"
    )
    script_hash = base64.b64encode(hashlib.sha256(EXPLORER_SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    body = [
        "<h1>crossfuse lab</h1>",
        f'<p class="sub">{sub}</p>',
        '<p class="banner">The run was interrupted; the experiments after the last one shown did not run.</p>'
        if record.get("interrupted")
        else "",
        "<h2>claims</h2>",
        _summary(experiments),
        *(_section(i, exp, figures.get(str(exp.get("name")), {})) for i, exp in enumerate(experiments)),
        _environment(env),
        '<p class="sub">Every number in this page is in results.json beside it.</p>',
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>crossfuse lab · {_text(record.get('size'))}</title><style>{_CSS}{EXPLORER_CSS}</style></head>"
        f"<body>{''.join(body)}<script>{EXPLORER_SCRIPT}</script></body></html>\n"
    )


def _load_figures(out: Path, experiments: list[dict[str, Any]]) -> dict[str, dict[str, bytes]]:
    """Figure bytes by experiment, read from the paths results.json gives (only inside ``out``)."""
    root = out.resolve()
    loaded: dict[str, dict[str, bytes]] = {}
    for exp in experiments:
        for fig_name, relative in (exp.get("figure_files") or {}).items():
            path = (out / str(relative)).resolve()
            if path.is_relative_to(root) and path.is_file():
                loaded.setdefault(str(exp.get("name")), {})[fig_name] = path.read_bytes()
    return loaded


def write_report(out: str | Path) -> Path:
    """Render ``out/results.json`` (and the figures it names) into ``out/report.html``; returns its path."""
    out = Path(out)
    results = out / "results.json"
    if not results.is_file():
        raise FileNotFoundError(f"report: expected {str(results)!r} (a lab run directory), not found")
    record = json.loads(results.read_text(encoding="utf-8"))
    page = render_report(record, _load_figures(out, list(record.get("experiments") or [])))
    return atomic_write_text(out / "report.html", page)
