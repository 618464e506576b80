"""Volume anomalies: five weeks of history with a weekly rhythm (weekends at 30% of weekdays).

The rule is checked twice: on the pure judge, day by day over the history, and through real
runs against a ledger holding that history (block: exit 5 and nothing merged; accept; warn).
"""

from __future__ import annotations

import json
import statistics
import textwrap
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg
from typer.testing import CliRunner

from pgstage.cli import app
from pgstage.ops.anomalies import Past, judge
from pgstage.pipeline import ledger
from pgstage.spec import AnomalySection

runner = CliRunner()
START = date(2024, 1, 1)          # a Monday
SETTINGS = AnomalySection()


def volume(day: date) -> int:
    """A feed of about 1,000 records on weekdays and 300 at weekends, with some day-to-day wobble."""
    wobble = (day.toordinal() * 37) % 81 - 40          # -40..40, deterministic
    return (300 + wobble // 4) if day.weekday() >= 5 else 1000 + wobble


TUESDAYS = [START + timedelta(days=d) for d in (1, 8, 15, 22, 29)]
TUESDAY_MEDIAN = statistics.median(volume(d) for d in TUESDAYS)
# the band: the median ± the largest of 50% of it, 100 records and 3.5 scaled MADs (the MAD is small here)
TUESDAY_BAND = f"{TUESDAY_MEDIAN / 2:,.0f}-{TUESDAY_MEDIAN * 1.5:,.0f}"


def history(days: int) -> list[Past]:
    """Newest first, as the ledger gives it."""
    return [Past(i + 1, START + timedelta(days=i), volume(START + timedelta(days=i)), 0) for i in range(days)][::-1]


def test_five_weeks_no_weekend_flagged_day_by_day() -> None:
    verdicts = []
    for i in range(35):
        day = START + timedelta(days=i)
        verdicts.append(judge(history(i), day, volume(day), 0, SETTINGS))
    assert not [v for v in verdicts if v.flagged]
    # learning until 7 runs, and until the weekday has 2 earlier runs: the first two weeks
    assert [v.verdict for v in verdicts[:14]] == ["learning"] * 14
    assert [v.verdict for v in verdicts[14:]] == ["ok"] * 21
    assert verdicts[7].reason == "1 earlier run(s) on a Monday; a verdict needs 2 (days are compared with the same weekday only)"
    saturday = verdicts[33]
    assert saturday.weekday == "Saturday" and saturday.expected is not None and saturday.expected[1] < 1000
    assert len(saturday.training_runs) == 4 and all((START + timedelta(days=r - 1)).weekday() == 5
                                                    for r in saturday.training_runs)


def test_a_ninety_percent_drop_on_a_tuesday_is_flagged() -> None:
    tuesday = START + timedelta(days=36)
    assert tuesday.weekday() == 1
    verdict = judge(history(35), tuesday, volume(tuesday) // 10, 0, SETTINGS)
    assert verdict.flagged and verdict.flags == ("read",)
    assert verdict.median == TUESDAY_MEDIAN and verdict.training_runs == (30, 23, 16, 9, 2)
    assert verdict.reason == f"{volume(tuesday) // 10:,} records read, expected {TUESDAY_BAND} on a Tuesday"
    # the same drop at the weekend level is a normal Saturday only on a Saturday
    assert judge(history(35), tuesday, 300, 0, SETTINGS).flagged
    assert not judge(history(35), tuesday + timedelta(days=4), 300, 0, SETTINGS).flagged


def test_zero_records_is_always_flagged_and_small_changes_never() -> None:
    monday = START + timedelta(days=35)
    assert judge(history(35), monday, 0, 0, SETTINGS).verdict == "flagged"
    assert judge(history(3), monday, 0, 0, SETTINGS).verdict == "flagged"           # even while learning
    assert judge([], monday, 0, 0, SETTINGS).verdict == "learning"                    # no history: nothing to compare
    small = [Past(i + 1, START + timedelta(days=i), 100, 0) for i in range(35)][::-1]
    # +150% but only 150 records: the absolute threshold (100) is exceeded, the relative one too -> flagged
    assert judge(small, monday, 250, 0, SETTINGS).flagged
    # +90 records is +90%, but under the absolute threshold -> not flagged
    assert not judge(small, monday, 190, 0, SETTINGS).flagged


def test_reject_ratio_is_judged_too() -> None:
    monday = START + timedelta(days=35)
    past = [Past(p.run_id, p.day, p.read, p.read // 100) for p in history(35)]    # 1% rejects
    assert not judge(past, monday, 1000, 12, SETTINGS).flagged
    verdict = judge(past, monday, 1000, 400, SETTINGS)
    assert verdict.flags == ("reject_ratio",) and "reject ratio 40.0%" in verdict.reason


def test_five_runs_of_history_flag_nothing_and_say_why() -> None:
    day = START + timedelta(days=5)
    verdict = judge(history(5), day, 10, 0, SETTINGS)
    assert (verdict.verdict, verdict.reason) == ("learning", "5 earlier successful run(s); a verdict needs 7")


# --- through real runs -------------------------------------------------------------------------------

SPEC = """
[pipeline]
name = "feed"
target = "shop.feed"
key = ["id"]

[source]
path = "feed_{{date}}.csv"

[columns]
id = {{ from = "Id", type = "bigint" }}

[anomaly]
action = "{action}"
"""


def seed_history(db_url: str, days: int) -> None:
    """The ledger of `days` earlier successful runs of `feed`, one per partition, as real runs leave it."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        ledger.ensure(conn)
        for i in range(days):
            day = START + timedelta(days=i)
            n = volume(day)
            counts = {"read": n, "rejected": 0, "valid": n, "duplicate": 0, "inserted": n, "updated": 0,
                      "unchanged": 0, "stale": 0, "deleted": 0}
            conn.execute("INSERT INTO pgstage.runs (pipeline, partition, target, status, counts, started_at, finished_at)"
                         " VALUES ('feed', %s, 'shop.feed', 'succeeded', %s, %s, %s)",
                         (day.isoformat(), json.dumps(counts), day + timedelta(days=1), day + timedelta(days=1)))


def load(tmp_path: Path, db_url: str, day: date, rows: int, action: str = "block") -> tuple[int, str]:
    (tmp_path / "spec.toml").write_text(textwrap.dedent(SPEC.format(action=action)))
    (tmp_path / f"feed_{day.isoformat()}.csv").write_text("Id\n" + "".join(f"{i}\n" for i in range(rows)))
    result = runner.invoke(app, ["run", str(tmp_path / "spec.toml"), "--partition", day.isoformat(), "--db", db_url])
    return result.exit_code, result.output


def test_blocked_run_merges_nothing_then_accepted(tmp_path: Path, db_url: str, sql: Any) -> None:
    seed_history(db_url, 35)
    tuesday = START + timedelta(days=36)
    code, out = load(tmp_path, db_url, tuesday, 100)
    assert code == 5, out
    assert f"volume anomaly: 100 records read, expected {TUESDAY_BAND} on a Tuesday: nothing was merged" in out
    run_id, status, verdict = sql("SELECT run_id, status, anomaly FROM pgstage.runs ORDER BY run_id DESC LIMIT 1")[0]
    assert status == "blocked" and verdict["verdict"] == "flagged" and verdict["expected"] == [TUESDAY_MEDIAN / 2, TUESDAY_MEDIAN * 1.5]
    assert verdict["training_runs"] == [30, 23, 16, 9, 2]
    assert sql("SELECT to_regclass('shop.feed')") == [(None,)]           # not even created: nothing merged
    assert sql("SELECT count(*) FROM pgstage.rejects") == [(0,)]
    listed = json.loads(runner.invoke(app, ["anomalies", "--pipeline", "feed", "--db", db_url, "--json"]).output)
    assert [(r["run_id"], r["anomaly"]["verdict"]) for r in listed] == [(run_id, "flagged")]
    accepted = runner.invoke(app, ["anomalies", "--accept", str(run_id), "--db", db_url])
    assert accepted.exit_code == 0 and "(accepted)" in accepted.output
    code, out = load(tmp_path, db_url, tuesday, 100)
    assert code == 0, out
    assert sql("SELECT count(*) FROM shop.feed") == [(100,)]
    assert sql("SELECT anomaly->>'verdict' FROM pgstage.runs ORDER BY run_id DESC LIMIT 1") == [("accepted",)]
    shown = runner.invoke(app, ["show", str(run_id), "--db", db_url]).output
    assert f"volume: flagged (accepted) — 100 records read, expected {TUESDAY_BAND} on a Tuesday" in shown
    missing = runner.invoke(app, ["anomalies", "--accept", "9999", "--db", db_url])
    assert missing.exit_code == 2 and "run 9999 has no volume verdict to accept" in missing.output


def test_warn_merges_and_a_weekend_passes(tmp_path: Path, db_url: str, sql: Any) -> None:
    seed_history(db_url, 35)
    saturday = START + timedelta(days=40)
    code, out = load(tmp_path, db_url, saturday, volume(saturday), action="warn")
    assert code == 0 and "volume: ok" in out
    tuesday = START + timedelta(days=43)
    code, out = load(tmp_path, db_url, tuesday, 0, action="warn")
    assert code == 0 and "volume: flagged — zero records where earlier runs had" in out
    assert sql("SELECT status, anomaly->>'verdict' FROM pgstage.runs ORDER BY run_id DESC LIMIT 2") == [
        ("succeeded", "flagged"), ("succeeded", "ok")]


def test_flagged_runs_stay_out_of_the_baseline(tmp_path: Path, db_url: str, sql: Any) -> None:
    seed_history(db_url, 35)
    tuesday = START + timedelta(days=36)
    assert load(tmp_path, db_url, tuesday, 5000, action="warn")[0] == 0           # flagged, merged
    later = tuesday + timedelta(days=7)
    code, out = load(tmp_path, db_url, later, 5000, action="warn")                # still flagged: not learnt
    assert "volume: flagged" in out
    training = sql("SELECT anomaly->'training_runs' FROM pgstage.runs ORDER BY run_id DESC LIMIT 1")[0][0]
    flagged_run = sql("SELECT min(run_id) FROM pgstage.runs WHERE anomaly->>'verdict' = 'flagged'")[0][0]
    assert flagged_run == 36 and training == [30, 23, 16, 9, 2]      # the five seeded Tuesdays, not run 36
