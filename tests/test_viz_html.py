"""The HTML report and the explorer fragment: escaping, self-containment, failures, figures, embedded JSON."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from crossfuse.lab.runner import ExperimentRecord, run_lab
from crossfuse.viz.explorer import embed_json, example_problems, render_explorer
from crossfuse.viz.html import render_report, write_report
from fake_experiments import EVIL, explorer_data, install, ok_result, run_boom, run_evil, run_explorer, run_ok


class PageParser(HTMLParser):
    """Collects elements with attributes, the text of each <script>, and every other text node."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.texts: list[str] = []
        self._in_script: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = dict(attrs)
            self.scripts.append((self._in_script, ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = None

    def handle_data(self, data: str) -> None:
        if self._in_script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)
        else:
            self.texts.append(data)


def _parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return parser


def _lab_page(tmp_path: Path, monkeypatch, runs: dict) -> tuple[Path, str]:
    install(monkeypatch, runs)
    lab = run_lab(size="quick", out=tmp_path / "run", stream=io.StringIO())
    path = write_report(lab.out)
    return lab.out, path.read_text()


def test_malicious_strings_are_escaped_everywhere(tmp_path, monkeypatch) -> None:
    out, page = _lab_page(tmp_path, monkeypatch, {"evil": run_evil})
    parsed = _parse(page)
    # exactly the two scripts we put there: the explorer's JSON data and the explorer's code
    assert [attrs.get("type") for attrs, _ in parsed.scripts] == ["application/json", None]
    assert EVIL not in page and "alert(1)</script>" not in page
    # the strings are shown as text: in the table cell, title, claim, token button, reference and raw numbers
    texts = "\n".join(parsed.texts)
    assert texts.count(EVIL) >= 6
    assert any(tag == "button" and attrs.get("class") == "tok" for tag, attrs in parsed.elements)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;</button>" in page  # the token
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>" in page  # the table cell
    # no event handler attribute was injected anywhere, and the SVG "figure" was not embedded
    assert not any(name.startswith("on") for _, attrs in parsed.elements for name in attrs)
    assert "not a PNG, not embedded" in page
    # the embedded JSON still carries the string intact for the script
    data = json.loads(parsed.scripts[0][1])
    assert data["examples"][0]["tokens"][1] == EVIL and data["examples"][0]["boxes"][0]["label"] == EVIL
    assert EVIL in data["examples"][0]["attention"]
    assert json.loads((out / "results.json").read_text())["experiments"][0]["result"]["name"] == EVIL


def test_page_is_self_contained_and_its_script_is_allowed_by_hash(tmp_path, monkeypatch) -> None:
    _, page = _lab_page(tmp_path, monkeypatch, {"ok": run_ok, "explorer": run_explorer})
    parsed = _parse(page)
    for tag, attrs in parsed.elements:
        for name in ("src", "href"):
            value = attrs.get(name)
            if value is not None:
                assert value.startswith(("data:image/", "#")), f"<{tag} {name}={value[:40]!r}> is not inline"
    assert "http://" not in page and "https://" not in page and "<link" not in page
    csp = next(a["content"] for t, a in parsed.elements if t == "meta" and a.get("http-equiv"))
    code = parsed.scripts[-1][1]
    digest = base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp
    # figures: the embedded bytes are the PNG the experiment returned
    uris = [a["src"] for t, a in parsed.elements if t == "img" and a.get("alt") == "curve.png"]
    assert len(uris) == 2 and base64.b64decode(uris[0].split(",", 1)[1]) == ok_result().figures["curve.png"]


def test_summary_badges_failure_and_environment(tmp_path, monkeypatch) -> None:
    out, page = _lab_page(tmp_path, monkeypatch, {"ok": run_ok, "boom": run_boom})
    summary = page.split('<table class="summary">', 1)[1].split("</table>", 1)[0]
    rows = summary.split("<tr>")[2:]
    assert "ok" in rows[0] and "fake: cross-attention wins" in rows[0] and 'class="badge ok">supported' in rows[0]
    assert "accuracy &gt;= 0.9" in rows[0] and "accuracy 0.912345" in rows[0]
    assert 'class="badge fail">failed' in rows[1] and "RuntimeError: boom" in rows[1]
    assert "Traceback (most recent call last)" in page and "boom/log.txt" in page
    env = page.split('<section id="environment">', 1)[1]
    record = json.loads((out / "results.json").read_text())
    for key in ("python", "torch", "numpy", "cpu", "torch_threads", "seed", "size", "date"):
        assert f"<th>{key}</th><td>{record['environment'][key]}" in env
    # a table number in the page is the number in results.json
    assert '<td class="num">0.912345</td>' in page
    assert record["experiments"][0]["result"]["tables"][0]["rows"][0][1] == 0.912345


def test_render_report_from_plain_record_counts_verdicts() -> None:
    records = [
        ExperimentRecord("a", "ok", 1.0, result=ok_result()).to_json(),
        ExperimentRecord("b", "ok", 1.0, result=ok_result(size="smoke")).to_json(),
        ExperimentRecord("c", "failed", 0.5, error="ValueError: x").to_json(),
    ]
    page = render_report({"size": "quick", "seed": 0, "experiments": records, "environment": {}})
    assert "3 experiments: 1 failed, 1 inconclusive, 1 supported" in page
    assert page.count('class="badge ok"') == 2  # summary row + section heading
    assert 'id="exp-2"' in page and 'href="#exp-2"' in page
    assert "figure curve.png: file not found" in page  # figures missing on disk are reported, not fatal


def test_explorer_fragment_selector_and_malformed_examples() -> None:
    good = explorer_data()
    bad = json.loads(json.dumps(good["examples"][0]))
    bad["attention"]["mean"] = bad["attention"]["mean"][:-1]  # one row short
    html = render_explorer({"kind": "binding", "examples": [good["examples"][0], bad, "junk"]})
    options = re.findall(r'<option value="([^"]*)">', html)
    assert options == ["mean", "gradient", "layer 1 / head 1", "layer 2 / head 3"]  # methods first: the default
    assert html.count('<figure class="ex"') == 1
    notes = unescape(html)
    assert "example 2 not shown: attention['mean']: expected 7 rows (one per token), got 6" in notes
    assert "example 3 not shown: example: expected a dict, got str" in notes
    assert example_problems(good["examples"][0]) == []
    no_image = dict(good["examples"][0], image="javascript:alert(1)")
    assert "javascript:" not in render_explorer({"kind": "binding", "examples": [no_image]})


@settings(max_examples=40, deadline=None)
@given(st.recursive(st.text() | st.integers() | st.floats(), lambda xs: st.lists(xs, max_size=3), max_leaves=8))
def test_embedded_json_round_trips_and_cannot_close_the_script(value) -> None:
    text = embed_json({"v": value})
    assert "<" not in text and ">" not in text and "&" not in text
    decoded = json.loads(text)["v"]

    def finite(x):
        if (isinstance(x, float) and x != x) or x in (float("inf"), float("-inf")):
            return None
        return [finite(v) for v in x] if isinstance(x, list) else x

    assert decoded == finite(value)
