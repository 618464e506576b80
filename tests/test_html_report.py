"""`pgstage report --html`: pages built from a real ledger, their numbers against the ledger's, and
the pages opened in headless Chromium (no console error, no request, every chart, not blank, escaped)."""

from __future__ import annotations

import io
import json
import re
from datetime import date, datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import given, strategies as st
from typer.testing import CliRunner

from pgstage.cli import app
from pgstage.errors import RejectLimitExceeded
from pgstage.htmlreport import model, write_pipeline_report, write_run_report
from pgstage.htmlreport.page import render_pipeline, render_run
from tests.chromium import Chromium, find_chromium
from tests.conftest import Loader

XSS = "<script>alert(1)</script>"
SPEC = """
[pipeline]
name = "orders"
target = "sales.orders"
key = ["id"]
strategy = "upsert"

[source]
kind = "csv"
path = "orders_{date}.csv"

[columns]
id     = { from = "id", type = "bigint", required = true }
amount = { from = "amount", type = "numeric(10,2)", min = 0 }
note   = { from = "note", type = "text", regex = "^[a-z]+$" }

[load]
max_reject_ratio = 0.9
"""


class Cells(HTMLParser):
    """The text of every element carrying a data-* attribute, by attribute, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str, str]] = []      # (attribute, its value, the element's text)
        self._open: list[tuple[str, str] | None] = []
        self._text: list[list[str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "meta", "img", "input", "link"):
            return
        data = next(((k, v or "") for k, v in attrs if k in ("data-count", "data-rule", "data-field")), None)
        self._open.append(data)
        self._text.append([])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("br", "meta", "img", "input", "link") or not self._open:
            return
        data, text = self._open.pop(), "".join(self._text.pop())
        if self._text:
            self._text[-1].append(text)
        if data:
            self.found.append((data[0], data[1], text))

    def handle_data(self, data: str) -> None:
        if self._text:
            self._text[-1].append(data)


def cells(html: str) -> list[tuple[str, str, str]]:
    parser = Cells()
    parser.feed(html)
    return parser.found


def number(text: str) -> int:
    return int(text.replace(",", ""))


def chart_values(html: str, name: str) -> dict[str, int]:
    """What a pygal chart of the page says about each bar: its label and value (pygal's <desc> elements)."""
    svg = re.search(r'<svg data-chart="' + name + r'".*?</svg>', html, re.DOTALL)
    assert svg, name
    pairs = re.findall(r'<desc class="value">([^<]*)</desc>(?:<desc class="[^"]*">[^<]*</desc>)*?'
                       r'<desc class="x_label">([^<]*)</desc>', svg.group(0))
    return {label: number(value) for value, label in pairs}


@pytest.fixture
def loaded(loader: Loader) -> Loader:
    """Two days of orders: day 1 with rejects (one raw value is a script tag), day 2 updating day 1."""
    loader.spec(SPEC)
    loader.write("orders_2024-01-01.csv",
                 "id,amount,note\n1,10.00,a\n2,-5,b\n3,7.50,\"" + XSS.replace('"', '""') + "\"\nx,1,c\n4,2,d\n4,3,e\n")
    loader.write("orders_2024-01-02.csv", "id,amount,note\n1,11.00,a\n5,1,f\n6,oops,g\n")
    first = loader.run(partition="2024-01-01")
    second = loader.run(partition="2024-01-02")
    assert (first.status, second.status) == ("succeeded", "succeeded")
    return loader


def test_run_page_numbers_equal_the_ledger(loaded: Loader, sql: Any, tmp_path: Path) -> None:
    out = write_run_report(1, tmp_path / "run.html", db=loaded.db_url)
    html = out.read_text(encoding="utf-8")
    found = cells(html)
    (counts,), = sql("SELECT counts FROM pgstage.runs WHERE run_id = 1")
    # The counts table comes first; each of its nine numbers is the ledger's.
    shown = {k: number(t) for attr, k, t in found[:40] if attr == "data-count"}
    assert shown == {k: counts[k] for k in model.FUNNEL}
    assert (counts["read"], counts["rejected"], counts["inserted"], counts["duplicate"]) == (6, 3, 2, 1)
    by_rule = dict(sql("SELECT concat_ws('.', r->>'column', r->>'rule'), count(*)::int FROM pgstage.rejects j,"
                       " jsonb_array_elements(j.reasons) r WHERE run_id = 1 GROUP BY 1"))
    assert {k: number(t) for attr, k, t in found if attr == "data-rule"} == by_rule == {
        "amount.min": 1, "note.regex": 1, "id.type": 1}
    # The charts draw the same numbers.
    assert chart_values(html, "funnel") == {k: counts[k] for k in model.FUNNEL
                                            if counts[k] or k in ("read", "rejected", "valid", "inserted")}
    assert chart_values(html, "rejects") == by_rule
    fields = {k: t for attr, k, t in found if attr == "data-field"}
    assert fields["run_id"] == "1" and fields["status"] == "succeeded"
    # The script tag is data: escaped in the markup, never a tag of the page.
    assert XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script") == 0
    # Every sample reject with its file and record number, in file order.
    rows = re.findall(r"<tr><td class=\"file\">[^<]*/(orders_[^<]+)</td><td class=\"n\">(\d+)</td>", html)
    assert rows == [("orders_2024-01-01.csv", "2"), ("orders_2024-01-01.csv", "3"), ("orders_2024-01-01.csv", "4")]


def test_run_page_timeline_has_every_batch_phase(loaded: Loader, sql: Any) -> None:
    batches = sql("SELECT file, batch_no, timings FROM pgstage.batches WHERE run_id = 1")
    assert len(batches) == 1 and set(batches[0][2]) == {"stage", "validate", "merge"}
    for start, end in batches[0][2].values():
        assert start <= end
    timings = batches[0][2]
    assert timings["stage"][1] <= timings["validate"][0] <= timings["validate"][1] <= timings["merge"][0]


def test_spec_is_recorded_with_the_password_masked(loader: Loader, sql: Any, tmp_path: Path) -> None:
    loader.spec(SPEC)
    loader.write("orders_2024-01-01.csv", "id,amount,note\n1,1,a\n")
    loader.run(partition="2024-01-01")
    (spec,), = sql("SELECT spec FROM pgstage.runs WHERE run_id = 1")
    assert spec["pipeline"]["name"] == "orders" and spec["columns"]["note"]["regex"] == "^[a-z]+$" and spec["columns"]["id"]["from"] == "id"
    html = write_run_report(1, tmp_path / "r.html", db=loader.db_url).read_text()
    assert "regex" in html and "&#34;orders&#34;" in html


def test_page_of_a_run_over_the_reject_threshold(loader: Loader, sql: Any, tmp_path: Path) -> None:
    loader.spec(SPEC.replace("max_reject_ratio = 0.9", "max_reject_ratio = 0.1"))
    loader.write("orders_2024-01-01.csv", "id,amount,note\n1,-1,a\n2,2,b\n")
    with pytest.raises(RejectLimitExceeded, match="nothing was merged"):
        loader.run(partition="2024-01-01")
    html = write_run_report(1, tmp_path / "r.html", db=loader.db_url).read_text()
    (counts, message), = sql("SELECT counts, message FROM pgstage.runs WHERE run_id = 1")
    found = cells(html)
    assert {k: number(t) for a, k, t in found[:40] if a == "data-count"} == {k: counts.get(k, 0) for k in model.FUNNEL}
    fields = {k: t for a, k, t in found if a == "data-field"}
    assert fields["status"] == "rejected_threshold" and fields["message"] == message
    assert sql("SELECT count(*) FROM pgstage.batches WHERE run_id = 1 AND status = 'merged'") == [(0,)]
    assert "<td>validated</td>" in html            # the batch was validated, never merged


def test_page_of_a_run_from_an_older_ledger(loaded: Loader, sql: Any, tmp_path: Path) -> None:
    """Runs recorded before batches had timings and runs had a spec still get a page, which says so."""
    sql("UPDATE pgstage.batches SET timings = NULL WHERE run_id = 1")
    sql("UPDATE pgstage.runs SET spec = NULL WHERE run_id = 1")
    html = write_run_report(1, tmp_path / "old.html", db=loaded.db_url).read_text()
    assert "1 batch(es) have no recorded timings" in html and 'id="chart-timeline"' not in html
    assert "This run did not record its spec" in html


@given(st.lists(st.tuples(st.floats(0, 1e4), st.floats(0, 100), st.floats(0, 100), st.floats(0, 100)),
                min_size=1, max_size=8))
def test_batch_spans_share_one_clock_from_the_first_phase(starts: list[tuple[float, float, float, float]]) -> None:
    base = 1.7e9
    batches = [{"file": "f.csv", "batch_no": i, "record_start": 1, "record_end": 2, "status": "merged",
                "timings": {"stage": [base + t, base + t + a], "validate": [base + t + a, base + t + a + b],
                            "merge": [base + t + a + b, base + t + a + b + c]}}
               for i, (t, a, b, c) in enumerate(starts)]
    spans, untimed = model.batch_spans(batches + [{"file": "f.csv", "batch_no": 99, "record_start": 1,
                                                   "record_end": 2, "status": "validated", "timings": None}])
    assert untimed == 1 and len(spans) == len(starts)
    first = min(t for t, *_ in starts)
    assert min(s.phases["stage"][0] for s in spans) == pytest.approx(0.0)
    for span in spans:
        t, a, b, c = starts[span.batch_no]
        assert span.phases["stage"][0] == pytest.approx(t - first, abs=1e-3)
        assert span.phases["merge"][1] - span.phases["stage"][0] == pytest.approx(a + b + c, abs=1e-3)
    assert [s.phases["stage"][0] for s in spans] == sorted(s.phases["stage"][0] for s in spans)


def test_secrets_are_masked_on_the_page() -> None:
    spec = {"source": {"url": "postgresql://ann:s3cret@db.example.com/shop", "kind": "postgres"},
            "alerts": {"webhook": "https://hooks.example.com/T000/B000/XyZ", "slack_token": "xoxb-1"},
            "pipeline": {"name": "x"}}
    masked = model.mask_secrets(spec)
    text = json.dumps(masked)
    assert "s3cret" not in text and "XyZ" not in text and "xoxb-1" not in text
    assert masked["pipeline"] == {"name": "x"} and masked["source"]["kind"] == "postgres"
    assert "db.example.com" in masked["source"]["url"]


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$*+,;", min_size=4,
               max_size=30))
def test_a_url_password_never_survives_masking(secret: str) -> None:
    password = "Zq" + secret          # "Zq": never part of the rest of the URL
    masked = json.dumps(model.mask_secrets({"source": {"url": f"postgresql://user:{password}@host:5432/db"}}))
    assert password not in masked and "host" in masked


def test_pipeline_page_numbers_equal_the_ledger(loaded: Loader, sql: Any, tmp_path: Path) -> None:
    loaded.run(partition="2024-01-02")          # skipped: a second run on day 2 that counts nothing
    html = write_pipeline_report("orders", tmp_path / "p.html", db=loaded.db_url).read_text()
    day_rows = re.findall(r'<tr data-day="([\d-]+)"><td>[\d-]+</td><td class="n">(\d+)</td>', html)
    assert day_rows == [("2024-01-01", "1"), ("2024-01-02", "2")]
    expected: dict[str, dict[str, int]] = {}
    for partition, counts in sql("SELECT partition, counts FROM pgstage.runs ORDER BY run_id"):
        day = expected.setdefault(partition, {k: 0 for k in model.FUNNEL})
        for k in model.FUNNEL:
            day[k] += counts.get(k, 0)
    shown = [number(t) for attr, k, t in cells(html) if attr == "data-count"]
    n = len(model.FUNNEL)
    assert shown[:n] == [expected["2024-01-01"][k] for k in model.FUNNEL]
    assert shown[n:2 * n] == [expected["2024-01-02"][k] for k in model.FUNNEL]
    assert shown[2 * n:3 * n] == [expected["2024-01-01"][k] + expected["2024-01-02"][k] for k in model.FUNNEL]
    assert [int(r) for r in re.findall(r'<tr data-run="(\d+)">', html)] == [3, 2, 1]
    # Sections of features not built yet are absent, not empty.
    for absent in ('id="anomalies"', 'id="backfill"', 'id="reconcile"'):
        assert absent not in html


def test_pipeline_days_window_ends_at_the_latest_day(loaded: Loader, tmp_path: Path) -> None:
    html = write_pipeline_report("orders", tmp_path / "p.html", days=1, db=loaded.db_url).read_text()
    assert re.findall(r'<tr data-day="([\d-]+)">', html) == ["2024-01-02"]


def test_seam_sections_render_when_their_data_exists() -> None:
    day = date(2024, 1, 1)
    runs = [{"run_id": i + 1, "partition": (day + timedelta(i)).isoformat(), "status": "succeeded",
             "started_at": datetime(2024, 2, 1, tzinfo=timezone.utc), "finished_at": None,
             "counts": {"read": 100 + i, "valid": 100 + i, "inserted": 100 + i}, "day": day + timedelta(i)}
            for i in range(3)]
    page = model.pipeline_page(
        "p", 7, runs, anomalies=(model.AnomalyDay(day, 90, 110, False), model.AnomalyDay(day + timedelta(2), 1, 2, True,
                                                                                         "block: 102 above 2")),
        reconciliations=(model.Reconciliation(datetime(2024, 2, 1, tzinfo=timezone.utc), "2024-01-01", "differences",
                                              1, 0, 2),),
        backfill=(model.BackfillUnit(day, "succeeded"), model.BackfillUnit(day + timedelta(1), "failed")))
    html = render_pipeline(page)
    assert 'id="anomalies"' in html and "block: 102 above 2" in html and "expected high" in html
    assert html.count('class="u-succeeded"') == 1 and html.count('class="u-failed"') == 1
    assert 'id="reconcile"' in html and "differences" in html


# --- verdicts and reconcile results from the ledger ------------------------------------------------------


@pytest.fixture
def watched(tmp_path: Path, db_url: str) -> tuple[Path, str]:
    """The `feed` pipeline of the anomaly tests: 35 days of history, a Tuesday blocked at 100 records (exit 5),
    then a normal Wednesday, reconciled clean."""
    from pgstage.ops.reconcile import reconcile
    from tests.test_ops_anomalies import START, load, seed_history, volume

    seed_history(db_url, 35)
    assert load(tmp_path, db_url, START + timedelta(days=36), 100)[0] == 5
    wednesday = START + timedelta(days=37)
    assert load(tmp_path, db_url, wednesday, volume(wednesday))[0] == 0
    assert not reconcile(tmp_path / "spec.toml", partition=wednesday, db=db_url).differences
    return tmp_path, db_url


def test_pipeline_page_draws_the_stored_verdicts_and_reconciliations(watched: tuple[Path, str], sql: Any) -> None:
    tmp_path, db_url = watched
    html = write_pipeline_report("feed", tmp_path / "p.html", days=366, db=db_url).read_text()
    ledger = sql("SELECT run_id, partition, anomaly FROM pgstage.runs WHERE anomaly IS NOT NULL ORDER BY run_id")
    assert [(p, a["verdict"]) for _, p, a in ledger] == [("2024-02-06", "flagged"), ("2024-02-07", "ok")]
    (blocked, _, verdict), (clean, _, ok) = ledger
    # the flagged run, its band, score and training runs as the ledger holds them
    row = re.search(r'<tr data-flagged="(\d+)"><td>([\d-]+)</td><td class="n">\d+</td><td class="n">([\d,]+)–([\d,]+)'
                    r'</td><td class="n">([-\d.]+)</td><td class="n">(\d+)</td><td>([^<]+)</td>', html)
    assert row is not None and html.count("data-flagged=") == 1
    low, high = verdict["expected"]
    assert row.groups() == (str(blocked), "2024-02-06", f"{low:,.0f}", f"{high:,.0f}", f"{verdict['score']:.1f}",
                            str(len(verdict["training_runs"])), f"flagged (block): {verdict['reason']}")
    # the history chart carries both days' bands and the flagged point
    svg = re.search(r'<svg data-chart="history".*?</svg>', html, re.DOTALL)
    assert svg is not None and "expected low" in svg.group(0) and "flagged" in svg.group(0)
    points = re.findall(r'<desc class="value">([^<]*)</desc>(?:<desc class="[^"]*">[^<]*</desc>)*?'
                        r'<desc class="x_label">([^<]*)</desc>', svg.group(0))
    assert "expected high" in svg.group(0)                # the band is a dashed line (no dots, no values)
    assert points.count(("100", "2024-02-06")) == 2          # records read, and the flagged point on it
    # the reconcile result, stored with the Wednesday's run
    rows = re.findall(r'<tr data-reconciled="(\d+)">.*?<span class="badge [^"]+">(\w+)</span></td>'
                      r'<td class="n">(\d+)</td><td class="n">(\d+)</td><td class="n">(\d+)</td></tr>', html)
    assert rows == [(str(clean), "matched", "0", "0", "0")]
    assert sql("SELECT run_id FROM pgstage.runs WHERE reconcile IS NOT NULL") == [(clean,)]


def test_run_pages_show_the_verdict_and_the_reconcile_result(watched: tuple[Path, str], sql: Any) -> None:
    tmp_path, db_url = watched
    (blocked, verdict), (clean, ok) = sql("SELECT run_id, anomaly FROM pgstage.runs WHERE anomaly IS NOT NULL"
                                          " ORDER BY run_id")
    html = write_run_report(blocked, tmp_path / "b.html", db=db_url).read_text()
    fields = {k: t for attr, k, t in cells(html) if attr == "data-field"}
    assert fields["status"] == "blocked" and 'class="badge s-blocked"' in html
    assert fields["anomaly"].startswith(f"flagged (block): {verdict['reason']}")
    assert "reconcile" not in fields
    html = write_run_report(clean, tmp_path / "c.html", db=db_url).read_text()
    fields = {k: t for attr, k, t in cells(html) if attr == "data-field"}
    assert fields["anomaly"].startswith(f"ok: {ok['reason']}")
    assert fields["reconcile"] == "matched (keys): 0 missing, 0 different"


def test_report_command_writes_the_file_and_says_where(loaded: Loader, tmp_path: Path) -> None:
    out = tmp_path / "run.html"
    result = CliRunner().invoke(app, ["report", "1", "--html", str(out), "--db", loaded.db_url])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output.replace("\n", "") and out.read_text().startswith("<!doctype html>")
    result = CliRunner().invoke(app, ["report", "--pipeline", "orders", "--days", "7", "--html", str(out),
                                      "--db", loaded.db_url])
    assert result.exit_code == 0, result.output
    assert "<h1>orders</h1>" in out.read_text()


def test_run_page_of_many_batches_draws_the_first_hundred() -> None:
    started = datetime(2024, 1, 1, tzinfo=timezone.utc)
    run = {"run_id": 7, "pipeline": "big", "partition": None, "target": "s.t", "status": "succeeded",
           "started_at": started, "finished_at": started + timedelta(seconds=90), "counts": {"read": 150, "valid": 150,
                                                                                          "inserted": 150},
           "rejects_by_rule": {}, "files": [], "spec": None, "spec_path": None}
    batches = [{"file": "data/big.csv", "batch_no": i, "record_start": i + 1, "record_end": i + 1, "status": "merged",
                "timings": {"stage": [1e9 + i, 1e9 + i + 0.5], "merge": [1e9 + i + 0.5, 1e9 + i + 0.9]}}
               for i in range(150)]
    html = render_run(model.run_page(run, batches, [], 0))
    assert "the first 100 of 150 batches" in html
    assert html.count("<td>big.csv #") == 100 and "<td>big.csv #99</td>" in html and "big.csv #100<" not in html
    assert "No record was rejected." in html and 'data-chart="rejects"' not in html


def test_markup_in_names_is_text_in_tables_and_charts() -> None:
    """File names, rule names, messages and spec values are data everywhere, the SVG of the charts included."""
    evil = "<img src=x onerror=alert(1)>"
    started = datetime(2024, 1, 1, tzinfo=timezone.utc)
    run = {"run_id": 1, "pipeline": f"p{evil}", "partition": None, "target": "s.t", "status": "failed",
           "started_at": started, "finished_at": None, "message": evil,
           "counts": {"read": 2, "rejected": 1, "valid": 1, "inserted": 1},
           "rejects_by_rule": {f"c.{evil}": 1}, "files": [{"path": f"{evil}.csv", "status": "loaded", "rows": {}}],
           "spec": {"pipeline": {"name": evil}}, "spec_path": evil}
    batches = [{"file": f"{evil}.csv", "batch_no": 0, "record_start": 1, "record_end": 2, "status": "merged",
                "timings": {"stage": [1.0, 2.0]}}]
    sample = {"file": f"{evil}.csv", "record": 1, "reasons": [{"column": "c", "rule": evil, "message": evil}],
              "raw": {evil: evil}}
    html = render_run(model.run_page(run, batches, [sample], 1))
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert html.count("<script") == 0


def test_report_command_has_help_and_a_docs_section() -> None:
    result = CliRunner().invoke(app, ["report", "--help"])
    assert result.exit_code == 0 and "--pipeline" in result.output and "--html" in result.output
    docs = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    assert "## `pgstage report RUN_ID --html FILE" in docs and "`pgstage report --pipeline NAME" in docs
    assert (Path(__file__).parents[1] / "docs" / "report.md").is_file()


@pytest.mark.parametrize("args, message", [
    (["report", "99", "--html", "{out}"], "there is no run 99 in this database"),
    (["report", "--pipeline", "nope", "--html", "{out}"], "there is no run of pipeline 'nope' in this database"),
    (["report", "1"], "say where to write the page with --html FILE"),
    (["report", "--html", "{out}"], "give one of a RUN_ID, --pipeline NAME or --backfill ID"),
    (["report", "1", "--pipeline", "orders", "--html", "{out}"], "give one of a RUN_ID, --pipeline NAME or --backfill ID"),
    (["report", "1", "--backfill", "1", "--html", "{out}"], "give one of a RUN_ID, --pipeline NAME or --backfill ID"),
    (["report", "--backfill", "99", "--html", "{out}"], "there is no backfill 99 in this database"),
    (["report", "--pipeline", "orders", "--days", "0", "--html", "{out}"], "--days must be 1 or more, got 0"),
    (["report", "1", "--html", "{missing}"], "the directory"),
])
def test_report_command_refuses_bad_input_and_writes_nothing(loaded: Loader, tmp_path: Path, args: list[str],
                                                              message: str) -> None:
    out, missing = tmp_path / "out.html", tmp_path / "no" / "such" / "out.html"
    argv = [a.format(out=out, missing=missing) for a in args] + ["--db", loaded.db_url]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not out.exists() and not missing.exists()


# ---- in a real browser -------------------------------------------------------------------------

chromium_missing = pytest.mark.skipif(find_chromium() is None, reason="no chromium on PATH (CI installs Debian's)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    if find_chromium() is None:
        pytest.skip("no chromium on PATH (CI installs Debian's)")
    with Chromium() as b:
        yield b


def pixel_stddev(png: bytes) -> float:
    from PIL import Image, ImageStat
    with Image.open(io.BytesIO(png)) as image:
        return max(ImageStat.Stat(image.convert("RGB")).stddev)


@chromium_missing
def test_the_harness_sees_console_errors_requests_and_dialogs(browser: Chromium, tmp_path: Path) -> None:
    """The browser checks below are only worth their passes if they fail on a page that misbehaves."""
    noisy = tmp_path / "noisy.html"
    noisy.write_text("<!doctype html><img src='http://127.0.0.1:9/x.png'><script>console.error('boom');"
                     "alert('hi')</script>")
    visit = browser.open(noisy)
    assert visit.requests == ["http://127.0.0.1:9/x.png"]
    assert any("boom" in e for e in visit.console_errors) and visit.dialogs == ["hi"]
    quiet = tmp_path / "quiet.html"     # requests without a script: an SVG image, a CSS background, a stylesheet
    quiet.write_text("<!doctype html><link rel=stylesheet href='https://cdn.example.com/a.css'>"
                     "<svg><image href='y.png'/></svg><div style='background:url(z.png)'>x</div>")
    assert sorted(browser.open(quiet).requests) == sorted([
        "https://cdn.example.com/a.css", (tmp_path / "y.png").as_uri(), (tmp_path / "z.png").as_uri()])
    strict = tmp_path / "strict.html"
    strict.write_text("<!doctype html><meta http-equiv='Content-Security-Policy' content=\"default-src 'none'\">"
                      "<img src='http://127.0.0.1:9/y.png'>")
    assert browser.open(strict).console_errors       # the policy's refusal is reported
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><body style='background:#fff'>")
    browser.open(blank)
    assert pixel_stddev(browser.screenshot()) == 0


@chromium_missing
def test_run_page_in_chromium(browser: Chromium, loaded: Loader, tmp_path: Path) -> None:
    out = write_run_report(1, tmp_path / "run.html", db=loaded.db_url)
    visit = browser.open(out)
    assert visit.console_errors == [] and visit.requests == [] and visit.dialogs == []
    charts = browser.evaluate("[...document.querySelectorAll('figure.chart > svg[data-chart]')]"
                              ".map(s => [s.dataset.chart, s.getBoundingClientRect().width > 200,"
                              " s.querySelectorAll('rect, path').length > 3])")
    assert charts == [["funnel", True, True], ["rejects", True, True], ["timeline", True, True]]
    shown = browser.evaluate("[...document.querySelectorAll('td.raw .value')].map(e => e.textContent)")
    assert XSS in shown
    assert browser.evaluate("document.querySelectorAll('script').length") == 0
    assert pixel_stddev(browser.screenshot()) > 10
    # On a phone the page fits the screen: no horizontal scroll of the page itself.
    browser.open(out, width=390, height=844, mobile=True)
    assert browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


@chromium_missing
def test_pipeline_page_in_chromium(browser: Chromium, loaded: Loader, tmp_path: Path) -> None:
    out = write_pipeline_report("orders", tmp_path / "p.html", db=loaded.db_url)
    visit = browser.open(out)
    assert visit.console_errors == [] and visit.requests == [] and visit.dialogs == []
    charts = browser.evaluate("[...document.querySelectorAll('figure.chart > svg[data-chart]')]"
                              ".map(s => [s.dataset.chart, s.querySelectorAll('path').length > 3])")
    assert charts == [["history", True], ["changes", True]]
    assert pixel_stddev(browser.screenshot()) > 10


@chromium_missing
def test_verdicts_and_reconciliations_in_chromium(browser: Chromium, watched: tuple[Path, str], sql: Any) -> None:
    tmp_path, db_url = watched
    visit = browser.open(write_pipeline_report("feed", tmp_path / "p.html", days=366, db=db_url))
    assert visit.console_errors == [] and visit.requests == [] and visit.dialogs == []
    shown = browser.evaluate("['anomalies', 'reconcile'].map(id => document.getElementById(id)"
                             ".getBoundingClientRect().height > 40)")
    assert shown == [True, True]
    assert browser.evaluate("[...document.querySelectorAll('tr[data-flagged]')].map(e => e.dataset.flagged)") == [
        str(sql("SELECT run_id FROM pgstage.runs WHERE status = 'blocked'")[0][0])]
    (blocked,), = sql("SELECT run_id FROM pgstage.runs WHERE status = 'blocked'")
    visit = browser.open(write_run_report(blocked, tmp_path / "b.html", db=db_url))
    assert visit.console_errors == [] and visit.requests == []
    assert browser.evaluate("getComputedStyle(document.querySelector('[data-field=status]')).backgroundColor") == (
        "rgb(224, 49, 49)")
