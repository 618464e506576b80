"""The progress bar's painter (pgstage/cli/_bar.py): it draws news, the clock once a second and pulsing bars, not idle frames.

The bar under a real terminal and a real run is tested in test_ops_logs.py and test_throttle_ops.py;
here the painter runs against a rich console writing into a string, with a long clock so that any
frame it draws is one an event (or a pulsing bar) asked for.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable

import pytest
from rich.console import Console

from pgstage.cli import _bar
from pgstage.cli.progress import _DeferredBar

HOUR = 3600.0


def _until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait for the painter's thread (a busy machine may hold it back); fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the painter did not get there"
        time.sleep(0.005)


def _settled(painter: _bar._Painter) -> int:
    """The frames drawn once the painter has drawn everything it was told about."""
    _until(lambda: not painter.bar.changed)
    time.sleep(painter.poll_s * 5)
    return painter.drawn


@pytest.mark.parametrize(("changed", "pulsing", "since", "due"), [
    (False, False, 0.0, False),      # nothing new, nothing moving: no frame
    (False, False, 0.99, False),
    (False, False, 1.0, True),       # the time left moves by the second
    (True, False, 0.0, True),        # an event: drawn at the next look
    (False, True, 0.0, True),        # a pulsing bar is animated at every look
])
def test_a_frame_is_drawn_for_news_the_clock_or_a_pulse(changed: bool, pulsing: bool, since: float, due: bool) -> None:
    assert _bar.redraw_due(changed, pulsing, since, clock_s=1.0) is due


def test_the_painter_draws_events_and_no_idle_frames() -> None:
    screen = io.StringIO()
    progress, bar = _bar.start(poll_s=0.01, clock_s=HOUR, console=Console(file=screen, force_terminal=True, width=160))
    painter = progress.painter
    assert painter is not None and painter.is_alive() and painter.name == "pgstage progress"
    try:
        time.sleep(0.2)
        assert painter.drawn == 0   # started, nothing happened: only the first frame, drawn by start()

        bar("file started", {"file": "a.csv", "bytes": 1000})
        _until(lambda: painter.drawn == 1)
        assert "a.csv · 0 records" in screen.getvalue()
        bar("batch staged", {"file": "a.csv", "read": 300, "byte_end": 400})
        _until(lambda: "a.csv · 300 records" in screen.getvalue())
        drawn = _settled(painter)
        assert drawn == 2   # one frame per event, none while nothing changes
        time.sleep(0.3)
        assert painter.drawn == drawn

        bar("run paused", {"detail": "replica lag 42s > 30s"})   # a pulsing bar: animated at every look
        _until(lambda: painter.drawn >= drawn + 3)
        assert "paused: replica lag 42s > 30s" in screen.getvalue()
        bar("run resumed", {})
        drawn = _settled(painter)
        time.sleep(0.3)
        assert painter.drawn == drawn   # the pause line hidden, the animation stops
        bar("some other event", {"file": "a.csv"})   # nothing the bar shows: no frame
        bar("batch staged", {"file": "b.csv", "read": 1, "byte_end": 1})   # a file the bar does not know
        assert not bar.changed
    finally:
        progress.stop()
    assert not painter.is_alive()


def test_stopping_draws_the_last_state_even_between_looks() -> None:
    screen = io.StringIO()
    progress, bar = _bar.start(poll_s=HOUR, clock_s=HOUR, console=Console(file=screen, force_terminal=True, width=160))
    bar("file started", {"file": "a.csv", "bytes": 10})
    bar("batch staged", {"file": "a.csv", "read": 7, "byte_end": 10})
    bar("batch merged", {})
    assert progress.painter is not None and progress.painter.drawn == 0   # its first look is an hour away
    progress.stop()
    last = screen.getvalue().rsplit("a.csv", 1)[-1]
    assert "· 7 records" in last and "1/1" in last
    assert not any(t.name == "pgstage progress" for t in threading.enumerate())


def test_the_run_listener_stops_the_painter() -> None:
    listener = _DeferredBar()
    listener("file started", {"file": "a.csv", "bytes": 10})
    assert listener.progress is not None and listener.progress.painter is not None
    painter = listener.progress.painter
    assert painter.is_alive()
    listener.close()
    assert not painter.is_alive()
