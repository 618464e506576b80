"""Deterministic orders CSVs for the benchmarks, cached under benchmarks/.data/.

Every field of a row is a pure function of its key index (a 64-bit mix of index and seed),
so the incremental file can rewrite exactly the rows of the clean file it updates without
reading it back, and a file is the same bytes on every run. Rows are built with one
f-string each from lookup tables (no datetime formatting per row) and written in chunks,
which keeps 2M rows well under the 15 s budget with the standard library only.

Layout (about 107 bytes a row, keys ascending as in a typical export):

    order_id,email,total,currency,created_at,updated_at,status
    1000000,Maria.Garcia4821@mail.example.org,123.45,USD,2024-01-15 10:22:01+00,2024-01-19 08:01:55+00,shipped

Variants: `clean` (N unique keys), `incremental` (every 10th key again with a newer
updated_at and a changed total, then 5% new keys), `dirty` (the clean file with every 50th
row broken: 2% in all, of which 1 row in 2000 is ragged and the rest fail one rule each).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

GEN_VERSION = 1                     # bump when the bytes a (variant, rows, seed) produces change
DATA_DIR = Path(__file__).resolve().parent / ".data"
HEADER = "order_id,email,total,currency,created_at,updated_at,status"
FIRST_KEY = 1_000_000
CHUNK_ROWS = 50_000
VARIANTS = ("clean", "incremental", "dirty")

STATUSES = ("pending", "paid", "shipped", "delivered", "cancelled", "refunded")
CURRENCIES = ("USD", "EUR", "GBP")
_FIRST = ("Maria", "james", "Wei", "Olivia", "noah", "Fatima", "Lucas", "emma", "Mateo", "Aisha", "liam", "Sofia",
          "Hiroshi", "chloe", "Ahmed", "Isabella", "Ethan", "zoe", "Ivan", "Priya", "Oliver", "mia", "Diego", "Hannah")
_LAST = ("Garcia", "smith", "Nguyen", "Johnson", "Müller", "brown", "Rossi", "Kowalski", "Tanaka", "Dubois",
         "Andersson", "silva", "Okafor", "Fernandez", "Novak", "Williams", "Chen", "Martin", "Larsen", "Patel")
_DOMAINS = ("mail.example.org", "example.com", "shop-mail.example.net", "inbox.example.co.uk", "example.io")
_DAYS = tuple((date(2024, 1, 1) + timedelta(days=d)).isoformat() for d in range(731))    # 2024-01-01 .. 2025-12-31
_TIMES = tuple(f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86_400))
_MASK = (1 << 64) - 1

# Broken values of the dirty file, one rule each (the ragged rows break COPY itself).
_BAD_CREATED = "2024-02-30 25:61:00+00"
_BAD_UPDATED = "not a date"
_BAD_EMAIL_SUFFIX = "_at_example.com"


@dataclass(frozen=True)
class Dataset:
    """A generated file and what the benchmarks must find in it."""

    variant: str
    rows: int                       # records after the header
    path: Path
    expect: dict[str, int]          # expected pgstage counts for this file (see scenarios)

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def _mix(i: int, seed: int) -> int:
    """splitmix64 finalizer: cheap, well spread, deterministic."""
    z = (i * 0x9E3779B97F4A7C15 + seed) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _fields(i: int, seed: int, *, revised: bool) -> tuple[str, ...]:
    """The 7 fields of key index i; `revised` is the later version the incremental file carries."""
    h = _mix(i, seed)
    cents = h & 0x1FFFF                                  # 0.00 .. 1310.71
    day = (h >> 17) % 366
    created = f"{_DAYS[day]} {_TIMES[(h >> 26) % 86_400]}+00"
    if revised:
        cents += 1 + (h >> 60)                           # always a different total
        up_day = 380 + (h >> 43) % 300                   # after any clean updated_at (day <= 379)
    else:
        up_day = day + 1 + (h >> 43) % 14
    updated = f"{_DAYS[up_day]} {_TIMES[(h >> 9) % 86_400]}+00"
    email = f"{_FIRST[(h >> 48) % 24]}.{_LAST[(h >> 53) % 20]}{(h >> 34) % 10_000}@{_DOMAINS[(h >> 58) % 5]}"
    return (str(FIRST_KEY + i), email, f"{cents // 100}.{cents % 100:02d}", CURRENCIES[(h >> 44) % 3], created,
            updated, STATUSES[(h >> 46) % 6])


def _line(f: tuple[str, ...]) -> str:
    return f"{f[0]},{f[1]},{f[2]},{f[3]},{f[4]},{f[5]},{f[6]}"


def _broken(i: int, f: tuple[str, ...]) -> str:
    """Row i of the dirty file when i % 50 == 7: ragged 1 time in 40, else one failing rule."""
    slot = (i // 50) % 40
    if slot == 0:
        return _line(f)[: -len(f[6]) - 1] if (i // 2000) % 2 else _line(f) + ",extra"
    kind = slot % 4
    if kind == 0:
        f = (*f[:4], _BAD_CREATED, *f[5:])
    elif kind == 1:
        f = (*f[:5], _BAD_UPDATED, f[6])
    elif kind == 2:
        f = (f[0], f[1], "-" + f[2], *f[3:])
    else:
        f = (f[0], f[1].split("@")[0] + _BAD_EMAIL_SUFFIX, *f[2:])
    return _line(f)


def _lines(variant: str, rows: int, seed: int) -> Iterator[str]:
    if variant == "clean":
        yield from (_line(_fields(i, seed, revised=False)) for i in range(rows))
    elif variant == "dirty":
        yield from (_broken(i, f) if i % 50 == 7 else _line(f)
                    for i, f in ((i, _fields(i, seed, revised=False)) for i in range(rows)))
    elif variant == "incremental":
        yield from (_line(_fields(i, seed, revised=True)) for i in range(3, rows, 10))
        yield from (_line(_fields(i, seed, revised=False)) for i in range(rows, rows + rows // 20))
    else:
        raise ValueError(f"unknown variant {variant!r}; use one of {VARIANTS}")


def expected(variant: str, rows: int) -> dict[str, int]:
    """pgstage counts the file must produce (into an empty target; incremental: onto the clean load)."""
    if variant == "clean":
        return {"read": rows, "rejected": 0, "inserted": rows}
    if variant == "dirty":
        bad = len(range(7, rows, 50))
        return {"read": rows, "rejected": bad, "inserted": rows - bad}
    updates, new = len(range(3, rows, 10)), rows // 20
    return {"read": updates + new, "rejected": 0, "updated": updates, "inserted": new}


def _write(path: Path, lines: Iterable[str], header: str = HEADER) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    chunk: list[str] = [header]
    with tmp.open("wb", buffering=1 << 20) as out:
        for line in lines:
            chunk.append(line)
            if len(chunk) >= CHUNK_ROWS:
                out.write(("\n".join(chunk) + "\n").encode())
                chunk.clear()
        if chunk:
            out.write(("\n".join(chunk) + "\n").encode())
    os.replace(tmp, path)          # a killed generator never leaves a half file in the cache


def dataset(variant: str, rows: int, seed: int = 42, directory: Path = DATA_DIR) -> Dataset:
    """The cached file for (variant, rows, seed), generated on first use."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"orders-{variant}-{rows}-s{seed}-v{GEN_VERSION}.csv"
    if not path.exists():
        _write(path, _lines(variant, rows, seed))
    return Dataset(variant, expected(variant, rows)["read"], path, expected(variant, rows))


def seed_file(directory: Path) -> Path:
    """A 10-row clean file, used to let pgstage create its target before a timed load."""
    path = directory / "orders-seed.csv"
    _write(path, (_line(_fields(i, 7, revised=False)) for i in range(10)))
    return path


if __name__ == "__main__":  # python -m benchmarks.data [rows]: generate and time the three variants
    import sys
    import time

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    for v in VARIANTS:
        t = time.perf_counter()
        d = dataset(v, n)
        print(json.dumps({"variant": v, "rows": d.rows, "bytes": d.size_bytes,
                          "bytes_per_row": round(d.size_bytes / d.rows, 1), "seconds": round(time.perf_counter() - t, 2),
                          "path": str(d.path)}))
