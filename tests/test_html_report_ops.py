"""The report's operations parts: a throttled run's pauses on its batch timeline, and a backfill's units
as month calendars by status (the pipeline page's section and `pgstage report --backfill ID`), against
the ledger read with bare SQL, and opened in headless Chromium."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, strategies as st
from typer.testing import CliRunner

import pgstage
from pgstage.cli import app
from pgstage.htmlreport import model, write_backfill_report, write_pipeline_report, write_run_report
from pgstage.htmlreport.page import render_pipeline
from tests import specs
from tests.test_backfill import START, make_data
from tests.test_backfill import specs as backfill_specs
from tests.test_html_report import browser, chromium_missing, pixel_stddev  # noqa: F401 (the fixture)
from tests.chromium import Chromium


class Cal(HTMLParser):
    """Every calendar cell: (calendar's pipeline, day, status class, tooltip), and legends' numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[str, str, str, str]] = []
        self.units: list[tuple[str, str]] = []
        self._calendar = ""
        self._units: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "data-calendar" in a:
            self._calendar = a["data-calendar"]
        if "data-day" in a and tag == "span":
            self.cells.append((self._calendar, a["data-day"], a["class"], a["title"]))
        self._units = a.get("data-units")

    def handle_data(self, data: str) -> None:
        if self._units is not None:
            self.units.append((self._units, data))
            self._units = None


def parse(html: str) -> Cal:
    cal = Cal()
    cal.feed(html)
    return cal


@pytest.fixture
def backfilled(tmp_path: Path, db_url: str) -> int:
    """Three days of three specs; beta's second day has no file, so that unit fails."""
    make_data(tmp_path, days=3)
    (tmp_path / "data" / "beta" / f"orders_{START + timedelta(days=1)}.csv").unlink()
    report = pgstage.backfill(backfill_specs(tmp_path), start=START, end=START + timedelta(days=2), db=db_url)
    assert report.units == {"pending": 0, "succeeded": 8, "skipped": 0, "failed": 1}
    return report.backfill_id


def expected_cells(sql: Any, backfill_id: int) -> list[tuple[str, str, str, str]]:
    rows = sql("SELECT pipeline, day, status, run_id, message FROM pgstage.backfill_units WHERE backfill_id = %s"
               " ORDER BY spec_no, day", (backfill_id,))
    return [(p, str(d), f"u-{s}", f"{d}: {s}" + (f", run {r}" if r is not None else "")
             + (f" — {m}" if s == "failed" and m else "")) for p, d, s, r, m in rows]


def test_backfill_page_shows_every_unit_by_status(backfilled: int, db_url: str, sql: Any, tmp_path: Path) -> None:
    out = tmp_path / "backfill.html"
    result = CliRunner().invoke(app, ["report", "--backfill", str(backfilled), "--html", str(out), "--db", db_url])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    html = out.read_text()
    found = parse(html)
    assert found.cells == expected_cells(sql, backfilled)
    # Legends: the whole backfill's, then each pipeline's; every status, zero included.
    assert found.units[:5] == [("succeeded", "8"), ("skipped", "0"), ("running", "0"), ("pending", "0"), ("failed", "1")]
    assert found.units[5:10] == [("succeeded", "3"), ("skipped", "0"), ("running", "0"), ("pending", "0"), ("failed", "0")]
    (message,) = sql("SELECT message FROM pgstage.backfill_units WHERE status = 'failed'")[0]
    assert f'data-failed="beta {START + timedelta(days=1)}"' in html and message.split(":")[0] in html
    assert html.count('data-month="2024-03"') == 3 and "<script" not in html


def test_pipeline_page_has_its_latest_backfill(backfilled: int, db_url: str, sql: Any, tmp_path: Path) -> None:
    html = write_pipeline_report("beta", tmp_path / "beta.html", db=db_url).read_text()
    assert f"<h2>Backfill {backfilled}</h2>" in html
    assert parse(html).cells == [c for c in expected_cells(sql, backfilled) if c[0] == "beta"]
    assert f"pgstage report --backfill {backfilled} --html FILE" in html


def test_a_running_unit_shows_as_running(backfilled: int, db_url: str, sql: Any, tmp_path: Path) -> None:
    """The queue says pending until the claim commits; a run of that (pipeline, day) going says running."""
    day = START + timedelta(days=1)
    sql("UPDATE pgstage.backfill_units SET status = 'pending', run_id = NULL WHERE pipeline = 'beta' AND day = %s", (day,))
    sql("INSERT INTO pgstage.runs (pipeline, partition, target, status, started_at) "
        "VALUES ('beta', %s, 'app.orders', 'running', now())", (str(day),))
    html = write_backfill_report(backfilled, tmp_path / "b.html", db=db_url).read_text()
    assert ("beta", str(day), "u-running", f"{day}: running") in parse(html).cells


def test_report_of_a_ledger_without_backfills(tmp_path: Path, db_url: str, loader: Any) -> None:
    result = CliRunner().invoke(app, ["report", "--backfill", "1", "--html", str(tmp_path / "x.html"), "--db", db_url])
    assert result.exit_code == 2 and "there is no backfill 1 in this database" in result.output
    assert not (tmp_path / "x.html").exists()


def test_calendar_months_lay_out_weeks_monday_first() -> None:
    units = (model.BackfillUnit(date(2024, 2, 28), "succeeded"), model.BackfillUnit(date(2024, 3, 1), "failed", 7, "no file"))
    feb, mar = model.calendar_months(units)
    assert (feb.label, mar.label) == ("2024-02", "2024-03")
    assert len(feb.weeks) == 5 and all(len(w) == 7 for w in feb.weeks)
    assert feb.weeks[4][2] == units[0] and feb.weeks[4][3] is None      # Wed 28th; 29th has no unit
    assert mar.weeks[0][:4] == (None, None, None, None) and mar.weeks[0][4] == units[1]   # 1 March 2024: a Friday
    assert units[1].title == "2024-03-01: failed, run 7 — no file"
    assert model.unit_tally(units) == {"succeeded": 1, "skipped": 0, "running": 0, "pending": 0, "failed": 1}


@given(st.sets(st.dates(min_value=date(2020, 1, 1), max_value=date(2026, 12, 31)), min_size=1, max_size=60))
def test_every_unit_is_in_its_month_and_weekday_once(days: set[date]) -> None:
    units = tuple(model.BackfillUnit(d, "succeeded") for d in sorted(days))
    months = model.calendar_months(units)
    placed = [(m.label, i, u) for m in months for w in m.weeks for i, u in enumerate(w) if u is not None]
    assert sorted(u.day for _, _, u in placed) == sorted(days)
    for label, weekday, unit in placed:
        assert label == f"{unit.day:%Y-%m}" and weekday == unit.day.weekday()
    first, last = min(days), max(days)
    assert len(months) == (last.year - first.year) * 12 + last.month - first.month + 1


def test_pipeline_page_calendar_from_the_model() -> None:
    day = date(2024, 1, 1)
    runs = [{"run_id": 1, "partition": "2024-01-01", "status": "succeeded",
             "started_at": datetime(2024, 2, 1, tzinfo=timezone.utc), "finished_at": None, "counts": {"read": 1}, "day": day}]
    page = model.pipeline_page("p", 7, runs, backfill=(model.BackfillUnit(day, "succeeded", 1),
                                                       model.BackfillUnit(day + timedelta(1), "pending")), backfill_id=4)
    cells = parse(render_pipeline(page)).cells
    assert cells == [("p", "2024-01-01", "u-succeeded", "2024-01-01: succeeded, run 1"),
                     ("p", "2024-01-02", "u-pending", "2024-01-02: pending")]


# --- the pauses on a run's timeline -----------------------------------------------------------------

@pytest.fixture
def throttled(loader: Any, sql: Any) -> int:
    """A run of 3 batches held ~3 s by a throttle_query at its start."""
    until = sql("SELECT (clock_timestamp() + interval '3 seconds')::text")[0][0]
    loader.spec(textwrap_spec(until))
    loader.write("notes.csv", "id,note\n" + "".join(f"{i},n{i}\n" for i in range(1, 301)))
    report = loader.run()
    assert report.status == "succeeded" and list(report.throttled_s) == ["throttle_query"]
    return report.run_id


def textwrap_spec(until: str) -> str:
    load = (f"batch_rows = 100\nworkers = 1\nthrottle_timeout = \"2min\"\n"
            f"throttle_query = \"select clock_timestamp() < '{until}'::timestamptz\"")
    return specs.template(name="thr", target="app.notes", path="notes.csv", columns=specs.NOTES, load=load).format()


def test_run_page_draws_the_pauses_on_the_timeline(throttled: int, loader: Any, sql: Any, tmp_path: Path) -> None:
    html = write_run_report(throttled, tmp_path / "run.html", db=loader.db_url).read_text()
    # The clock's origin: the first batch phase or pause, whichever began first (bare SQL over the ledger).
    (origin,) = sql("""SELECT least((SELECT min(extract(epoch FROM started_at)) FROM pgstage.pauses WHERE run_id = %(r)s),
                              (SELECT min((t.value->>0)::float8) FROM pgstage.batches b, jsonb_each(b.timings) t
                               WHERE b.run_id = %(r)s))""", {"r": throttled})[0]
    pauses = sql("SELECT reason, detail, extract(epoch FROM started_at)::float8, seconds FROM pgstage.pauses"
                 " WHERE run_id = %s ORDER BY started_at", (throttled,))
    rows = re.findall(r'<tr data-pause="([^"]+)"><td>[^<]*</td><td class="n">([^<]*)</td><td class="n">([^<]*)</td>'
                      r'<td>([^<]*)</td></tr>', html)
    assert rows == [(r, f"{start - origin:.3f}", f"{secs:.3f}", d) for r, d, start, secs in pauses]
    svg = re.search(r'<svg data-chart="timeline".*?</svg>', html, re.DOTALL)
    assert svg and "paused: throttle_query" in svg.group(0)
    labels = re.findall(r'<desc class="x_label">([^<]*)</desc>', svg.group(0))
    assert labels.count("paused: throttle_query") >= 1 and sum(1 for x in set(labels) if x.startswith("notes.csv #")) == 3


@chromium_missing
def test_backfill_and_paused_pages_in_chromium(browser: Chromium, backfilled: int, db_url: str, tmp_path: Path) -> None:
    out = write_backfill_report(backfilled, tmp_path / "b.html", db=db_url)
    visit = browser.open(out)
    assert visit.console_errors == [] and visit.requests == [] and visit.dialogs == []
    drawn = browser.evaluate("[...document.querySelectorAll('.cal span[data-day]')].map(s => {"
                             " const r = s.getBoundingClientRect(); return [s.className, r.width > 10 && r.height > 10,"
                             " getComputedStyle(s).backgroundColor]; })")
    assert len(drawn) == 9 and all(visible for _, visible, _ in drawn)
    colours = {cls: colour for cls, _, colour in drawn}
    assert colours == {"u-succeeded": "rgb(47, 158, 68)", "u-failed": "rgb(224, 49, 49)"}
    assert pixel_stddev(browser.screenshot()) > 10
    browser.open(out, width=390, height=844, mobile=True)
    assert browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


@chromium_missing
def test_run_page_with_pauses_in_chromium(browser: Chromium, throttled: int, loader: Any, tmp_path: Path) -> None:
    out = write_run_report(throttled, tmp_path / "run.html", db=loader.db_url)
    visit = browser.open(out)
    assert visit.console_errors == [] and visit.requests == [] and visit.dialogs == []
    charts = browser.evaluate("[...document.querySelectorAll('figure.chart > svg[data-chart]')]"
                              ".map(s => [s.dataset.chart, s.getBoundingClientRect().width > 200])")
    assert ["timeline", True] in charts
    assert browser.evaluate("[...document.querySelectorAll('#pauses tr[data-pause]')].map(r => r.cells[0].textContent)"
                            ) == ["throttle_query"]
    # The paused series has a bar on one row only, the pause's own (3 batches and 1 pause: 4 rows).
    widths = browser.evaluate("[...document.querySelectorAll('svg[data-chart=timeline] .serie-' + "
                              "[...document.querySelectorAll('svg[data-chart=timeline] .legend')].findIndex("
                              "l => l.textContent.trim() === 'paused') + ' rect.rect')].map(r => r.getBoundingClientRect().width)")
    assert len(widths) == 4 and sum(1 for w in widths if w > 0) == 1   # a short pause on a long timeline may be under a pixel wide
    browser.open(out, width=390, height=844, mobile=True)
    assert browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
