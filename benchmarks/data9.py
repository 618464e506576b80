"""The orders file a user reported (issue #18): 9 columns, ISO-8601 `Z` timestamps, a nullable
bigint and a free-text note quoted in 2% of records. Cached under benchmarks/.data/ like data.py.

    order_id,customer_id,email,total,currency,status,created_at,updated_at,note
    1000000,1234567,Maria.Garcia4821@mail.example.org,123.45,USD,shipped,2024-01-15T10:22:01Z,2024-01-19T08:01:55Z,leave at the door
    1000001,,james.smith77@example.com,9.90,EUR,paid,2024-03-02T23:10:00Z,2024-03-04T01:00:09Z,
    1000002,2000451,...,"Ring twice, then ""wait"";
    gate code 4411",

`customer_id` is empty in 1 record of 8; `note` is empty in 3 of 8, plain words in the rest,
and in 1 record of 50 a quoted value holding commas, doubled quotes and a line break (so COPY,
not a line split, must find where those records end). Every field is a pure function of the
key index (data._mix), so the incremental file rewrites exactly the keys it updates.

Variants: `clean` (N unique keys) and `incremental` (every 10th key again with a newer
updated_at and a changed total, then 5% new keys: the 15% delta of the report).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from benchmarks.data import _DAYS, _TIMES, CURRENCIES, DATA_DIR, FIRST_KEY, STATUSES, Dataset, _mix, _write, expected
from benchmarks.data import _DOMAINS, _FIRST, _LAST

GEN_VERSION = 1
HEADER = "order_id,customer_id,email,total,currency,status,created_at,updated_at,note"
VARIANTS = ("clean", "incremental")
_PLAIN_NOTES = ("leave at the door", "gift wrap please", "call on arrival", "no invoice in the box",
                "deliver after 5pm")
_QUOTED_NOTES = ('"Ring twice, then ""wait"";\ngate code {n}"', '"Fragile: glass, handle with care\nthanks, {n}"',
                 '"Customer says ""urgent"", call {n}"')


def _line(i: int, seed: int, *, revised: bool) -> str:
    h = _mix(i, seed)
    cents = h & 0x1FFFF
    day = (h >> 17) % 366
    created = f"{_DAYS[day]}T{_TIMES[(h >> 26) % 86_400]}Z"
    if revised:
        cents += 1 + (h >> 60)
        up_day = 380 + (h >> 43) % 300
    else:
        up_day = day + 1 + (h >> 43) % 14
    updated = f"{_DAYS[up_day]}T{_TIMES[(h >> 9) % 86_400]}Z"
    email = f"{_FIRST[(h >> 48) % 24]}.{_LAST[(h >> 53) % 20]}{(h >> 34) % 10_000}@{_DOMAINS[(h >> 58) % 5]}"
    customer = "" if (h >> 5) % 8 == 0 else str(1_000_000 + (h >> 37) % 900_000)
    slot = (h >> 23) % 400
    if slot < 8:                      # 2%: quoted, with commas, doubled quotes and a line break
        note = _QUOTED_NOTES[slot % 3].format(n=(h >> 40) % 10_000)
    elif slot < 158:                  # 37.5% empty
        note = ""
    else:
        note = _PLAIN_NOTES[slot % 5]
    return (f"{FIRST_KEY + i},{customer},{email},{cents // 100}.{cents % 100:02d},{CURRENCIES[(h >> 44) % 3]},"
            f"{STATUSES[(h >> 46) % 6]},{created},{updated},{note}")


def _lines(variant: str, rows: int, seed: int) -> Iterator[str]:
    if variant == "clean":
        yield from (_line(i, seed, revised=False) for i in range(rows))
    elif variant == "incremental":
        yield from (_line(i, seed, revised=True) for i in range(3, rows, 10))
        yield from (_line(i, seed, revised=False) for i in range(rows, rows + rows // 20))
    else:
        raise ValueError(f"unknown variant {variant!r}; use one of {VARIANTS}")


def dataset(variant: str, rows: int, seed: int = 42, directory: Path = DATA_DIR) -> Dataset:
    """The cached 9-column file for (variant, rows, seed), generated on first use."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"orders9-{variant}-{rows}-s{seed}-v{GEN_VERSION}.csv"
    if not path.exists():
        _write(path, _lines(variant, rows, seed), header=HEADER)
    want = expected(variant, rows)
    return Dataset(variant, want["read"], path, want)


def seed_file(directory: Path) -> Path:
    """A 10-row file in this shape, to let pgstage create its target before a timed load."""
    path = directory / "orders9-seed.csv"
    _write(path, (_line(i, 7, revised=False) for i in range(10)), header=HEADER)
    return path
