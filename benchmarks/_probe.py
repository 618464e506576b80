"""The live workload of `benchmarks.production`: a separate process of paced client sessions.

Each kind of statement has its own session and thread, so a statement blocked behind a load's
row lock does not stop the others from being sampled. The probe runs in its own process
(spawned, not forked) so its latencies never include waiting for the load's Python threads
(the GIL). It records, per kind, when each statement started (`time.monotonic()`, one clock
for every process of the machine) and how long it took; the parent cuts the samples into
phases by its own timestamps.

Kinds (keys are the benchmark's order_id values):

- `lookup`: `SELECT * … WHERE order_id = k`, k over every key of the loaded table.
- `update_disjoint`: `UPDATE … SET status = status WHERE order_id = k`, k over keys the load
  does not write: a row update in the same table (its WAL, index and commit), no row-lock wait.
- `update_overlap`: the same over keys the load rewrites: an application changing an order
  while the load updates it. The statement waits for the row lock of the load's open
  transaction; the load's `ON CONFLICT … DO UPDATE` waits for the probe's (short) one.

Pacing: one statement per `interval_s` per kind (a closed loop with a pause: a blocked
statement delays that kind's next one, so a long block is one slow sample, not many).
"""

from __future__ import annotations

import random
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

import psycopg

STATEMENTS = {
    "lookup": "SELECT * FROM bench.orders WHERE order_id = %s",
    "update_disjoint": "UPDATE bench.orders SET status = status WHERE order_id = %s",
    "update_overlap": "UPDATE bench.orders SET status = status WHERE order_id = %s",
}


def keys_for(kind: str, first_key: int, rows: int) -> range:
    """The load rewrites the keys of even index (benchmarks.production.live_lines); odd ones it leaves."""
    if kind == "update_overlap":
        return range(first_key, first_key + rows, 2)
    if kind == "update_disjoint":
        return range(first_key + 1, first_key + rows, 2)
    return range(first_key, first_key + rows)


def _session(url: str, kind: str, keys: range, interval_s: float, stop: Event, out: list[tuple[float, float]],
             seed: int) -> None:
    rng = random.Random(seed)
    statement = STATEMENTS[kind]
    with psycopg.connect(url, autocommit=True, application_name=f"probe {kind}") as conn:
        while not stop.is_set():
            key = keys[rng.randrange(len(keys))]
            started = time.monotonic()
            conn.execute(statement, (key,))   # type: ignore[arg-type]   # a constant statement
            out.append((started, (time.monotonic() - started) * 1000))
            time.sleep(interval_s)


def run(url: str, first_key: int, rows: int, interval_s: float, ready: Event, stop: Event, pipe: Connection) -> None:
    """Probe until `stop`; then send {kind: [(started, ms), …]} down `pipe`."""
    samples: dict[str, list[tuple[float, float]]] = {kind: [] for kind in STATEMENTS}
    threads = [threading.Thread(target=_session, name=kind, daemon=True,
                                args=(url, kind, keys_for(kind, first_key, rows), interval_s, stop, samples[kind], i))
               for i, kind in enumerate(STATEMENTS)]
    for t in threads:
        t.start()
    ready.set()
    for t in threads:
        t.join()
    result: dict[str, Any] = samples
    pipe.send(result)
    pipe.close()
