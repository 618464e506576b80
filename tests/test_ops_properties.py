"""Properties of the volume judge and of log redaction, over generated histories and secrets."""

from __future__ import annotations

import statistics
from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from pgstage.ops.anomalies import Past, judge
from pgstage.ops import logs
from pgstage.ops.logs import redact, secret
from pgstage.spec import AnomalySection

DAY = date(2024, 6, 3)   # a Monday
SETTINGS = AnomalySection()

# weeks of history: per week, the volumes of Monday..Sunday
weeks = st.lists(st.lists(st.integers(min_value=1, max_value=100_000), min_size=7, max_size=7), min_size=2, max_size=8)


def history(volumes: list[list[int]]) -> list[Past]:
    days = [(DAY - timedelta(days=7 * (len(volumes) - w)) + timedelta(days=d), n)
            for w, week in enumerate(volumes) for d, n in enumerate(week)]
    return [Past(i + 1, day, n, 0) for i, (day, n) in enumerate(days)][::-1]


@settings(max_examples=200, deadline=None)
@given(weeks)
def test_the_weekday_median_is_never_flagged(volumes: list[list[int]]) -> None:
    mondays = [week[0] for week in volumes][-8:]
    median = statistics.median(mondays)
    assert judge(history(volumes), DAY, int(median), 0, SETTINGS).verdict in ("ok", "learning")


@settings(max_examples=200, deadline=None)
@given(weeks, st.integers(min_value=-100, max_value=100))
def test_a_change_within_the_absolute_threshold_is_never_flagged(volumes: list[list[int]], change: int) -> None:
    median = statistics.median([week[0] for week in volumes][-8:])
    read = max(1, int(median) + change)
    if abs(read - median) <= SETTINGS.absolute:
        assert not judge(history(volumes), DAY, read, 0, SETTINGS).flagged


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=10_000), max_size=6), st.integers(min_value=1, max_value=10**9))
def test_learning_until_seven_runs_never_flags_a_nonzero_day(volumes: list[int], read: int) -> None:
    past = [Past(i + 1, DAY - timedelta(days=len(volumes) - i), n, 0) for i, n in enumerate(volumes)][::-1]
    assert judge(past, DAY, read, 0, SETTINGS).verdict == "learning"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="@", blacklist_categories=("Zs", "Cc", "Zl", "Zp")),
               min_size=1, max_size=30))
def test_a_url_password_never_survives(password: str) -> None:
    assert redact(f"cannot connect to postgresql://app:{password}@db:5432/x now") == \
        "cannot connect to postgresql://app:***@db:5432/x now"


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=12, max_size=40), st.text(max_size=20), st.text(max_size=20))
def test_a_registered_secret_never_survives(value: str, before: str, after: str) -> None:
    kept = set(logs._secrets)
    try:
        secret(value)
        assert value not in redact(before + value + after)
    finally:   # other tests' lines must not lose text to a generated "secret"
        logs._secrets.clear()
        logs._secrets.update(kept)
