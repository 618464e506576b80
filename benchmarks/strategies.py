"""Strategy scenarios: replace a day (both swap paths) and an scd2 load, each against the
hand-written SQL a careful engineer would run instead, in the same round.

* `replace_day` / `replace_day_native`: the target holds a day of `--rows` orders (and a tenth
  as many on the next day); a new file of the same day (every total changed) replaces it.
  Baseline `bare_replace_day`: COPY into an UNLOGGED text table, then in one transaction
  `DELETE … WHERE created_at in the day; INSERT … SELECT DISTINCT ON (order_id) typed …`.
* `scd2_10pct`: the target holds one version of `--rows` customers (as of day 1); a full
  snapshot where 10% of them changed email is loaded as of day 2. Baseline `bare_scd2`: COPY,
  then `UPDATE … SET valid_to, is_current = false WHERE changed` and
  `INSERT … SELECT … WHERE no current row` (the classic two statements), on a table whose only
  index is the partial unique one on current keys. Baseline `bare_scd2_constrained`: the same
  statements on a table with the invariants pgstage's target has — a version id primary key
  (a random uuid), `is_current = (valid_to IS NULL)`, `valid_to > valid_from` and the btree_gist
  exclusion constraint against overlapping versions — so the same indexes on both sides.

Both sides start from the same state, built untimed (pgstage builds its own target with a
first untimed run; the baselines get the same rows by INSERT … SELECT). pgstage's specs carry
types only (no rules), like the baselines; the price measured is the ledger, the batching,
the rejects' bookkeeping and the strategy's own safety (the collector, the constraints).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

SCENARIOS = ("replace_day", "replace_day_native", "scd2_10pct")
BASELINES = ("bare_replace_day", "bare_scd2", "bare_scd2_constrained")
RATIOS = {"replace_day": [("bare_replace_day", "bare DELETE + INSERT")],
          "replace_day_native": [("bare_replace_day", "bare DELETE + INSERT")],
          "scd2_10pct": [("bare_scd2_constrained", "bare scd2, same constraints"),
                         ("bare_scd2", "bare two-statement scd2")]}
DAY = "2024-01-15"
ORDERS_SPEC = """\
[pipeline]
name = "bench_{name}"
target = "bench.day_orders"
key = ["order_id"]
strategy = "replace_partition"
partition = {{ column = "created_at", grain = "day", native = {native} }}

[source]
path = {path}

[columns]
order_id   = {{ from = "order_id", type = "bigint" }}
email      = {{ from = "email", type = "text" }}
total      = {{ from = "total", type = "bigint" }}
created_at = {{ from = "created_at", type = "timestamptz" }}
"""
CUSTOMERS_SPEC = """\
[pipeline]
name = "bench_scd2"
target = "bench.customers"
key = ["customer_id"]
strategy = "scd2"

[source]
path = {path}

[columns]
customer_id = {{ from = "customer_id", type = "bigint" }}
email       = {{ from = "email", type = "text" }}
country     = {{ from = "country", type = "text" }}
"""


def write_orders(path: Path, rows: int, day: str, first_id: int, seed: int) -> Path:
    rng = random.Random(seed)
    start = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    with path.open("w") as out:
        out.write("order_id,email,total,created_at\n")
        for i in range(rows):
            at = start + timedelta(seconds=rng.randrange(86400))
            out.write(f"{first_id + i},u{rng.randrange(10**6)}@example.com,{rng.randrange(10**5)},{at.isoformat()}\n")
    return path


def write_customers(path: Path, rows: int, changed_share: float, seed: int) -> Path:
    rng = random.Random(seed)
    with path.open("w") as out:
        out.write("customer_id,email,country\n")
        for i in range(rows):
            email = f"c{i}@example.com" if rng.random() >= changed_share else f"c{i}.new@example.com"
            out.write(f"{i},{email},{('FR', 'DE', 'US', 'JP')[i % 4]}\n")
    return path


def files(workdir: Path, rows: int) -> dict[str, Path]:
    """The inputs, generated per session (small next to the orders files)."""
    return {
        "day_old": write_orders(workdir / "day-old.csv", rows, DAY, 0, 1),
        "next_day": write_orders(workdir / "next-day.csv", max(rows // 10, 1), "2024-01-16", 10 * rows, 2),
        "day_new": write_orders(workdir / "day-new.csv", rows, DAY, 0, 3),
        "snap1": write_customers(workdir / "snap1.csv", rows, 0.0, 4),
        "snap2": write_customers(workdir / "snap2.csv", rows, 0.1, 4),
    }


def orders_spec(workdir: Path, path: Path, native: bool) -> Path:
    name = f"replace_{'native' if native else 'rows'}_{path.stem.replace('-', '_')}"
    out = workdir / f"spec-{name}.toml"
    out.write_text(ORDERS_SPEC.format(name="native" if native else "rows", native=str(native).lower(),
                                      path=f'"{path}"'))
    return out


def customers_spec(workdir: Path, path: Path) -> Path:
    out = workdir / f"spec-scd2-{path.stem}.toml"
    out.write_text(CUSTOMERS_SPEC.format(path=f'"{path}"'))
    return out


# --- the hand-written baselines (timed in the child process) ------------------------------------

ORDERS = sql.Identifier("bench", "day_orders")
CUSTOMERS = sql.Identifier("bench", "customers")
STAGE = sql.Identifier("bench", "stage")


def setup_orders(conn: psycopg.Connection[Any], old: Path, next_day: Path) -> None:
    """The baseline's table holding the old day and the next day (untimed)."""
    from benchmarks.baselines import copy_file

    conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
    conn.execute(sql.SQL("CREATE TABLE {} (order_id bigint PRIMARY KEY, email text, total bigint,"
                         " created_at timestamptz)").format(ORDERS))
    for path in (old, next_day):
        copy_file(conn, sql.SQL("COPY {} FROM STDIN (FORMAT csv, HEADER true)").format(ORDERS), path)


def load_replace_day(conn: psycopg.Connection[Any], path: Path) -> dict[str, int]:
    """COPY to text, then DELETE the day and INSERT the new rows in one transaction."""
    from benchmarks.baselines import copy_file

    conn.execute(sql.SQL("CREATE UNLOGGED TABLE {} (order_id text, email text, total text, created_at text)").format(STAGE))
    read = copy_file(conn, sql.SQL("COPY {} FROM STDIN (FORMAT csv, HEADER true)").format(STAGE), path)
    with conn.transaction():
        deleted = conn.execute(sql.SQL("DELETE FROM {} WHERE created_at >= %s::timestamptz"
                                       " AND created_at < %s::timestamptz + interval '1 day'").format(ORDERS),
                               (DAY, DAY)).rowcount
        inserted = conn.execute(sql.SQL(
            "INSERT INTO {} SELECT DISTINCT ON (order_id::bigint) order_id::bigint, email, total::bigint,"
            " created_at::timestamptz FROM {} ORDER BY order_id::bigint").format(ORDERS, STAGE)).rowcount
    conn.execute(sql.SQL("DROP TABLE {}").format(STAGE))
    return {"read": read, "inserted": inserted, "deleted": deleted}


def setup_customers(conn: psycopg.Connection[Any], first: Path, constrained: bool = False) -> None:
    """The baseline's history holding the first snapshot (untimed); `constrained`: pgstage's invariants too."""
    from benchmarks.baselines import copy_file

    conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
    conn.execute(sql.SQL("CREATE TABLE {} (customer_id bigint NOT NULL, email text, country text,"
                         " valid_from timestamptz NOT NULL, valid_to timestamptz, is_current boolean NOT NULL)")
                 .format(CUSTOMERS))
    conn.execute(sql.SQL("CREATE UNIQUE INDEX ON {} (customer_id) WHERE is_current").format(CUSTOMERS))
    if constrained:
        conn.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
        conn.execute(sql.SQL(
            "ALTER TABLE {} ADD COLUMN version_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
            " ADD CHECK (is_current = (valid_to IS NULL)), ADD CHECK (valid_to IS NULL OR valid_to > valid_from),"
            " ADD EXCLUDE USING gist (customer_id WITH =, tstzrange(valid_from, valid_to) WITH &&)").format(CUSTOMERS))
    conn.execute(sql.SQL("CREATE TABLE bench.snap (customer_id bigint, email text, country text)"))
    copy_file(conn, sql.SQL("COPY {} FROM STDIN (FORMAT csv, HEADER true)").format(sql.Identifier("bench", "snap")),
              first)
    conn.execute(sql.SQL("INSERT INTO {} (customer_id, email, country, valid_from, valid_to, is_current)"
                         " SELECT *, '2024-01-02', NULL, true FROM bench.snap").format(CUSTOMERS))
    conn.execute("DROP TABLE bench.snap")


def load_scd2(conn: psycopg.Connection[Any], path: Path) -> dict[str, int]:
    """COPY to text, then close the changed current rows and insert their new versions (and new keys)."""
    from benchmarks.baselines import copy_file

    conn.execute(sql.SQL("CREATE UNLOGGED TABLE {} (customer_id text, email text, country text)").format(STAGE))
    read = copy_file(conn, sql.SQL("COPY {} FROM STDIN (FORMAT csv, HEADER true)").format(STAGE), path)
    as_of = "2024-01-03"
    typed = sql.SQL("(SELECT customer_id::bigint AS customer_id, email, country FROM {})").format(STAGE)
    with conn.transaction():
        updated = conn.execute(sql.SQL(
            "UPDATE {t} t SET valid_to = %s, is_current = false FROM {s} s WHERE t.customer_id = s.customer_id"
            " AND t.is_current AND (t.email, t.country) IS DISTINCT FROM (s.email, s.country)").format(
            t=CUSTOMERS, s=typed), (as_of,)).rowcount
        inserted = conn.execute(sql.SQL(
            "INSERT INTO {t} (customer_id, email, country, valid_from, valid_to, is_current)"
            " SELECT s.*, %s, NULL, true FROM {s} s WHERE NOT EXISTS"
            " (SELECT 1 FROM {t} c WHERE c.customer_id = s.customer_id AND c.is_current)").format(
            t=CUSTOMERS, s=typed), (as_of,)).rowcount
    conn.execute(sql.SQL("DROP TABLE {}").format(STAGE))
    return {"read": read, "updated": updated, "written": inserted}


# --- one round (parent side) -------------------------------------------------------------------


def _settle(url: str, table: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() != (None,):
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(*table.split("."))))
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            pass


def _digest(url: str, query: str) -> list[Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    return [int(v) if v is not None else None for v in row or ()]


ORDERS_DIGEST = "SELECT count(*), sum(total), sum(hashtext(email)::bigint) FROM bench.day_orders"
CUSTOMERS_DIGEST = ("SELECT count(*), count(*) FILTER (WHERE {c}), sum(hashtext(email)::bigint) FILTER (WHERE {c})"
                    " FROM bench.customers")


def run_repeat(bench: Any, selected: set[str], rep: int) -> None:
    """Every selected strategy scenario and its baseline, each chain in a fresh database."""
    from benchmarks.scenarios import BenchmarkFailure, check_identity

    inputs = files(bench.workdir, bench.rows)
    n, tenth = bench.rows, max(bench.rows // 10, 1)

    def pgstage(name: str, url: str, spec: Path, timed: bool, **job: Any) -> dict[str, Any]:
        result = bench.child({"kind": "pgstage", "spec": str(spec), "db": url, **job})
        check_identity(name, result)
        if timed:
            bench.record(name, rep, result, n)
        return result

    def baseline(name: str, url: str, path: Path) -> dict[str, Any]:
        result = bench.child({"kind": name, "db": url, "file": str(path)})
        bench.record(name, rep, result, n)
        return result

    digests: dict[str, list[Any]] = {}
    if selected & {"replace_day", "replace_day_native"}:
        if bench.baselines:
            with bench.database("bare_replace") as url:
                with psycopg.connect(url, autocommit=True) as conn:
                    setup_orders(conn, inputs["day_old"], inputs["next_day"])
                _settle(url, "bench.day_orders")
                baseline("bare_replace_day", url, inputs["day_new"])
                digests["bare_replace_day"] = _digest(url, ORDERS_DIGEST)
        for name, native in (("replace_day", False), ("replace_day_native", True)):
            if name not in selected:
                continue
            with bench.database(name) as url:
                pgstage(name, url, orders_spec(bench.workdir, inputs["next_day"], native), False, partition="2024-01-16")
                pgstage(name, url, orders_spec(bench.workdir, inputs["day_old"], native), False, partition=DAY)
                _settle(url, "bench.day_orders")
                result = pgstage(name, url, orders_spec(bench.workdir, inputs["day_new"], native), True, partition=DAY)
                c = result["counts"]
                if (c["read"], c["inserted"], c["deleted"]) != (n, n, n):
                    raise BenchmarkFailure(f"{name}: counts {c}, expected read = inserted = deleted = {n}")
                digests[name] = _digest(url, ORDERS_DIGEST)
                if digests[name][0] != n + tenth:
                    raise BenchmarkFailure(f"{name}: the target holds {digests[name][0]} rows, expected {n + tenth}")
                if "bare_replace_day" in digests and digests[name] != digests["bare_replace_day"]:
                    bench.warnings.append(f"repeat {rep + 1}: {name} and bare_replace_day targets differ: "
                                          f"{digests[name]} vs {digests['bare_replace_day']}")
    if "scd2_10pct" in selected:
        changed = sum(1 for line in inputs["snap2"].read_text().splitlines() if ".new@" in line)
        current = "_is_current"
        if bench.baselines:
            for name, constrained in (("bare_scd2", False), ("bare_scd2_constrained", True)):
                with bench.database(name) as url:
                    with psycopg.connect(url, autocommit=True) as conn:
                        setup_customers(conn, inputs["snap1"], constrained)
                    _settle(url, "bench.customers")
                    baseline(name, url, inputs["snap2"])
                    digests[name] = _digest(url, CUSTOMERS_DIGEST.format(c="is_current"))
        with bench.database("scd2") as url:
            pgstage("scd2_10pct", url, customers_spec(bench.workdir, inputs["snap1"]), False, as_of="2024-01-02")
            _settle(url, "bench.customers")
            result = pgstage("scd2_10pct", url, customers_spec(bench.workdir, inputs["snap2"]), True,
                             as_of="2024-01-03")
            c = result["counts"]
            if (c["read"], c["updated"], c["unchanged"]) != (n, changed, n - changed):
                raise BenchmarkFailure(f"scd2_10pct: counts {c}, expected {changed} updated of {n}")
            digests["scd2_10pct"] = _digest(url, CUSTOMERS_DIGEST.format(c=current))
            for name in ("bare_scd2", "bare_scd2_constrained"):
                if name in digests and digests["scd2_10pct"] != digests[name]:
                    bench.warnings.append(f"repeat {rep + 1}: scd2_10pct and {name} targets differ: "
                                          f"{digests['scd2_10pct']} vs {digests[name]}")
