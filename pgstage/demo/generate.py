"""Deterministic generator of a messy three-source sales data set (Shopify, WooCommerce, Stripe).

pgstage is only worth demoing and benchmarking against files that look like real exports:
a BOM, local times with and without offsets, thousands separators, duplicates, late and
stale updates, ragged rows, bad values. Faults come at rates low enough (about 2% rejects
per file) that `max_reject_ratio = 0.05` passes comfortably. One `random.Random(seed)` drives
everything and no host state (time zone database, hash seed) is read, so a seed always
yields byte-identical files. Rows stream to disk; only the ~1% scheduled re-deliveries of
earlier orders are held in memory.
"""

from __future__ import annotations

import argparse
import csv
import random
from collections.abc import Callable, Iterator, Sequence
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

__all__ = ["FAULT_RATES", "HEADERS", "SHARES", "SOURCES", "generate"]

SOURCES: tuple[str, ...] = ("shopify", "woocommerce", "stripe")
SHARES: dict[str, float] = {"shopify": 0.5, "woocommerce": 0.3, "stripe": 0.2}
HEADERS: dict[str, list[str]] = {
    "shopify": ["Id", "Name", "Email", "Financial Status", "Currency", "Total", "Created at",
                "Updated at"],
    "woocommerce": ["Order ID", "Order Date", "Order Status", "Billing Email", "Order Total", "Order Currency"],
    "stripe": ["id", "Created (UTC)", "Amount", "Amount Refunded", "Currency", "Status", "Customer Email"],
}

# Per-order probability of each quirk; one draw per order picks at most one, so the rates
# are exact in expectation and never compound. Rows the specs reject: bad_date, bad_email,
# negative, ragged, nan_amount, inf_created (1.6% Shopify/WooCommerce, 2.1% Stripe). The rest load:
# duplicate (collapsed by key), late_update / stale (re-delivered on a later day),
# zero_updated (NULL), no_email, newline (valid quoted CSV), messy_* (fixed by normalize).
FAULT_RATES: dict[str, dict[str, float]] = {
    "shopify": {
        "duplicate": 0.008, "late_update": 0.010, "stale": 0.005, "bad_date": 0.005,
        "zero_updated": 0.010, "no_email": 0.015, "bad_email": 0.005, "negative": 0.005,
        "ragged": 0.001, "newline": 0.003, "messy_email": 0.010, "messy_currency": 0.030,
    },
    "woocommerce": {
        "duplicate": 0.008, "late_update": 0.010, "bad_date": 0.005, "no_email": 0.015,
        "bad_email": 0.005, "negative": 0.005, "ragged": 0.001, "messy_email": 0.010,
    },
    "stripe": {
        "duplicate": 0.008, "late_update": 0.005, "bad_date": 0.003, "no_email": 0.050,
        "bad_email": 0.005, "negative": 0.003, "nan_amount": 0.005, "inf_created": 0.005,
    },
}

_T = TypeVar("_T")
_LATE_DELAYS = (1, 1, 1, 2, 3)  # days until a re-delivery; most updates arrive the next day
_FIRST = ("anna", "ben", "carla", "dev", "elif", "farid", "grace", "hugo", "ines", "jonas", "kemal",
          "lena", "marco", "nora", "olga", "pavel", "quinn", "rosa", "sven", "tara", "umar", "vera")
_LAST = ("smith", "mueller", "garcia", "chen", "novak", "rossi", "kowalski", "dubois", "silva",
         "jensen", "okafor", "tanaka", "schmidt", "brown", "larsen", "moreau", "weber", "ali")
_DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "gmx.de", "web.de", "icloud.com", "proton.me",
            "example.com", "hotmail.co.uk", "orange.fr")
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_STRIPE_PRICES = (900, 1900, 2900, 4900, 9900, 19900)


def generate(out_dir: Path, *, days: int = 7, orders_per_day: int = 50_000, seed: int = 42,
             start: date = date(2024, 1, 1)) -> list[Path]:
    """Writes out_dir/{shopify,woocommerce,stripe}/orders_YYYY-MM-DD.csv for each day; returns the paths sorted."""
    master = random.Random(seed)
    # One independent stream per source, so tuning one source leaves the others' bytes alone.
    rngs = {name: random.Random(master.getrandbits(64)) for name in SOURCES}
    customers = {name: _customers(rngs[name]) for name in SOURCES}
    counts = _split(orders_per_day)
    carry: dict[str, dict[int, list[list[str]]]] = {name: {} for name in SOURCES}
    next_id = dict.fromkeys(SOURCES, 0)  # order numbers keep counting across days
    paths: list[Path] = []
    for index in range(days):
        day = start + timedelta(days=index)
        for name in SOURCES:
            folder = Path(out_dir) / name
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"orders_{day.isoformat()}.csv"
            # Shopify's export is opened in Excel first, hence the BOM ("utf-8-sig" writes one).
            encoding = "utf-8-sig" if name == "shopify" else "utf-8"
            with path.open("w", encoding=encoding, newline="") as handle:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(HEADERS[name])
                writer.writerows(_day_rows(name, rngs[name], day, index, days, counts[name],
                                           customers[name], carry[name], next_id))
            paths.append(path)
    return sorted(paths)


def _split(orders_per_day: int) -> dict[str, int]:
    """Exact 50/30/20 split whose parts always add up to orders_per_day."""
    shopify = round(orders_per_day * SHARES["shopify"])
    woocommerce = round(orders_per_day * SHARES["woocommerce"])
    return {"shopify": shopify, "woocommerce": woocommerce, "stripe": orders_per_day - shopify - woocommerce}


def _day_rows(name: str, rng: random.Random, day: date, index: int, days: int, count: int,
              customers: tuple[str, ...], carry: dict[int, list[list[str]]],
              next_id: dict[str, int]) -> Iterator[list[str]]:
    """One day's records: re-deliveries of earlier orders first, then new orders by creation time."""
    yield from carry.pop(index, [])
    new_row, later_version = _ROW_MAKERS[name]
    thresholds = _cumulative(FAULT_RATES[name])
    for second in sorted(rng.randrange(86_400) for _ in range(count)):
        next_id[name] += 1
        row = new_row(rng, day, second, next_id[name], _one(rng, customers))
        fault = _pick(rng.random(), thresholds)
        if fault is None:
            yield row
        elif fault == "duplicate":
            yield row
            yield list(row)
        elif fault in ("late_update", "stale"):
            target = index + rng.choice(_LATE_DELAYS)
            if fault == "late_update":
                again = later_version(rng, row, day + timedelta(days=target - index))
            else:
                again = _shopify_stale(rng, row, day, second)
            if again is not None and target < days:
                carry.setdefault(target, []).append(again)
            yield row
        else:
            yield _spoil(name, fault, row, rng, day)


def _cumulative(rates: dict[str, float]) -> list[tuple[float, str]]:
    edges: list[tuple[float, str]] = []
    total = 0.0
    for kind, rate in rates.items():
        total += rate
        edges.append((total, kind))
    return edges


def _pick(draw: float, edges: list[tuple[float, str]]) -> str | None:
    if draw >= edges[-1][0]:  # the common case: a clean row
        return None
    for edge, kind in edges:
        if draw < edge:
            return kind
    return None


# --- values ------------------------------------------------------------------------------


def _one(rng: random.Random, options: Sequence[_T]) -> _T:
    """rng.choice without its rejection sampling: several times faster, still deterministic."""
    return options[int(rng.random() * len(options))]


def _customers(rng: random.Random, count: int = 20_000) -> tuple[str, ...]:
    """A fixed pool of customers per source, so repeat buyers exist (as in any real shop)."""
    return tuple(f"{_one(rng, _FIRST)}.{_one(rng, _LAST)}{rng.randrange(1000)}@{_one(rng, _DOMAINS)}"
                 for _ in range(count))


def _mangle_email(email: str, rng: random.Random) -> str:
    """Typical hand-typed breakage, each of which fails `^[^@\\s]+@[^@\\s]+$`."""
    local, _, domain = email.partition("@")
    return rng.choice((f"{local}(at){domain}", f"{local}@", f"{local}@@{domain}",
                       f"{local.replace('.', ' ')}@{domain}"))


def _cents(rng: random.Random) -> int:
    """Long-tailed basket sizes (median ~55.00), so a few reach the thousands separator."""
    whole = min(int(rng.lognormvariate(4.0, 1.1)), 25_000)
    return max(whole, 1) * 100 + _one(rng, (0, 0, 50, 95, 99))


def _decimal(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def _decimal_thousands(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100:,}.{abs(cents) % 100:02d}"


def _weighted(draw: float, table: tuple[tuple[float, str], ...]) -> str:
    for edge, value in table:
        if draw < edge:
            return value
    return table[-1][1]


@lru_cache(maxsize=1)
def _clocks() -> tuple[str, ...]:
    """HH:MM:SS for every second of a day, formatted once instead of per row."""
    return tuple(f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86_400))


def _nth_sunday(year: int, month: int, n: int) -> date:
    first = date(year, month, 1)
    return first + timedelta(days=(6 - first.weekday()) % 7 + 7 * (n - 1))


@lru_cache(maxsize=1024)
def _new_york_offsets(day: date) -> tuple[int, str, str]:
    """(second of day the offset changes, offset before, offset after) for America/New_York.

    The US rule is coded here rather than read from zoneinfo so the output never depends
    on the host's time zone database.
    """
    dst_start, dst_end = _nth_sunday(day.year, 3, 2), _nth_sunday(day.year, 11, 1)
    if day == dst_start:
        return 7200, "-0500", "-0400"
    if day == dst_end:
        return 7200, "-0400", "-0500"
    offset = "-0400" if dst_start < day < dst_end else "-0500"
    return 86_400, offset, offset


def _new_york_stamp(day: date, second: int) -> str:
    switch, before, after = _new_york_offsets(day)
    return f"{day.isoformat()} {_clocks()[second]} {before if second < switch else after}"


# --- Shopify: US store, local time with offset, BOM ---------------------------------------

_SHOPIFY_STATUS = ((0.88, "paid"), (0.94, "pending"), (0.98, "refunded"), (1.0, "partially_refunded"))
_SHOPIFY_CURRENCY = ((0.70, "USD"), (0.85, "EUR"), (1.0, "GBP"))
_S_ID, _S_NAME, _S_EMAIL, _S_STATUS, _S_CURRENCY, _S_TOTAL, _S_CREATED, _S_UPDATED = range(8)


def _shopify_row(rng: random.Random, day: date, second: int, seq: int, email: str) -> list[str]:
    updated = min(second + int(rng.expovariate(1 / 900)), 86_399)
    return [str(5_001_000_000 + seq * 7), f"#{1000 + seq}", email,
            _weighted(rng.random(), _SHOPIFY_STATUS), _weighted(rng.random(), _SHOPIFY_CURRENCY),
            _decimal(_cents(rng)), _new_york_stamp(day, second), _new_york_stamp(day, updated)]


def _shopify_later(rng: random.Random, row: list[str], day: date) -> list[str]:
    """The same order, paid or refunded since, exported again with a newer Updated at."""
    later = list(row)
    later[_S_STATUS] = {"pending": "paid", "paid": rng.choice(("refunded", "partially_refunded"))
                        }.get(row[_S_STATUS], "refunded")
    later[_S_UPDATED] = _new_york_stamp(day, rng.randrange(86_400))
    return later


def _shopify_stale(rng: random.Random, row: list[str], day: date, second: int) -> list[str] | None:
    """Make `row` a later version and return an older one (still pending) for re-delivery.

    Mirrors an export replayed from a lagging replica: the Id comes back with an Updated at
    before the version already delivered, which upsert_if_newer must ignore.
    """
    newer = min(second + 600 + int(rng.expovariate(1 / 1800)), 86_399)
    if newer - second < 3:
        return None
    row[_S_UPDATED] = _new_york_stamp(day, newer)
    older = list(row)
    older[_S_STATUS] = "pending"
    older[_S_UPDATED] = _new_york_stamp(day, second + (newer - second) // 3)
    return older


# --- WooCommerce: Berlin shop, local time without offset, thousands separators -------------

_WOO_STATUS = ((0.80, "wc-completed"), (0.92, "wc-processing"), (0.95, "wc-on-hold"),
               (0.98, "wc-refunded"), (1.0, "wc-cancelled"))
_WOO_CURRENCY = ((0.90, "EUR"), (0.95, "USD"), (1.0, "GBP"))
_W_ID, _W_DATE, _W_STATUS, _W_EMAIL, _W_TOTAL, _W_CURRENCY = range(6)


def _woo_row(rng: random.Random, day: date, second: int, seq: int, email: str) -> list[str]:
    return [str(48_000 + seq), f"{day.day:02d}/{day.month:02d}/{day.year} {_clocks()[second][:5]}",
            _weighted(rng.random(), _WOO_STATUS), email, _decimal_thousands(_cents(rng)),
            _weighted(rng.random(), _WOO_CURRENCY)]


def _woo_later(rng: random.Random, row: list[str], day: date) -> list[str]:
    """The same order with a new status or an edited total; Woo exports no updated-at."""
    later = list(row)
    if row[_W_STATUS] in ("wc-processing", "wc-on-hold"):
        later[_W_STATUS] = "wc-completed"
    elif row[_W_STATUS] == "wc-completed" and rng.random() < 0.5:
        later[_W_STATUS] = "wc-refunded"
    else:  # the shop owner edited the order
        cents = int(row[_W_TOTAL].replace(",", "").replace(".", ""))
        change = rng.choice((-500, -250, 1000, 1995)) if cents > 500 else 1000
        later[_W_TOTAL] = _decimal_thousands(cents + change)
    return later


# --- Stripe: UTC, lowercase currency, refunds as a second amount ---------------------------

_STRIPE_STATUS = ((0.93, "succeeded"), (0.97, "failed"), (1.0, "refunded"))
_T_ID, _T_CREATED, _T_AMOUNT, _T_REFUNDED, _T_CURRENCY, _T_STATUS, _T_EMAIL = range(7)


def _stripe_row(rng: random.Random, day: date, second: int, seq: int, email: str) -> list[str]:
    cents = _one(rng, _STRIPE_PRICES) if rng.random() < 0.7 else _cents(rng)
    status = _weighted(rng.random(), _STRIPE_STATUS)
    refunded = cents if status == "refunded" else 0
    return ["py_" + "".join(rng.choices(_ALNUM, k=24)), f"{day.isoformat()} {_clocks()[second]}",
            _decimal(cents), _decimal(refunded), "usd" if rng.random() < 0.7 else "eur", status,
            email]


def _stripe_later(rng: random.Random, row: list[str], day: date) -> list[str] | None:
    """A charge refunded on a later day shows up again as refunded; failed charges never are."""
    if row[_T_STATUS] != "succeeded":
        return None
    later = list(row)
    later[_T_STATUS], later[_T_REFUNDED] = "refunded", row[_T_AMOUNT]
    return later


# --- faults that only spoil one row -------------------------------------------------------

_Maker = Callable[[random.Random, date, int, int, str], list[str]]
_Later = Callable[[random.Random, list[str], date], list[str] | None]
_ROW_MAKERS: dict[str, tuple[_Maker, _Later]] = {
    "shopify": (_shopify_row, _shopify_later),
    "woocommerce": (_woo_row, _woo_later),
    "stripe": (_stripe_row, _stripe_later),
}
# (email, total, created) column of each source.
_COLUMNS: dict[str, tuple[int, int, int]] = {
    "shopify": (_S_EMAIL, _S_TOTAL, _S_CREATED),
    "woocommerce": (_W_EMAIL, _W_TOTAL, _W_DATE),
    "stripe": (_T_EMAIL, _T_AMOUNT, _T_CREATED),
}


def _bad_dates(name: str, year: int) -> tuple[str, ...]:
    """An impossible calendar date in the source's own format, and plain garbage."""
    impossible = {"shopify": f"{year}-02-30 10:00:00 -0500", "woocommerce": f"30/02/{year} 10:00",
                  "stripe": f"{year}-02-30 10:00:00"}[name]
    return impossible, "not a date"


def _spoil(name: str, fault: str, row: list[str], rng: random.Random, day: date) -> list[str]:
    email, total, created = _COLUMNS[name]
    if fault == "bad_date":
        # Shopify's Updated at is not required, but a bad value there is still a type error.
        column = rng.choice((_S_CREATED, _S_UPDATED)) if name == "shopify" else created
        row[column] = rng.choice(_bad_dates(name, day.year))
    elif fault == "zero_updated":
        row[_S_UPDATED] = "0000-00-00 00:00:00"
    elif fault == "no_email":
        row[email] = ""
    elif fault == "bad_email":
        row[email] = _mangle_email(row[email], rng)
    elif fault == "messy_email":
        row[email] = f" {row[email].upper()} "
    elif fault == "messy_currency":
        row[_S_CURRENCY] = f" {row[_S_CURRENCY].lower()} "
    elif fault == "negative":
        row[total] = "-" + row[total]
    elif fault == "ragged":
        row = row[:-1] if rng.random() < 0.5 else [*row, row[-1]]
    elif fault == "newline":
        row[_S_NAME] += rng.choice(("\nGift", "\nGift wrap, no invoice", "\nLeave at the door"))
    elif fault == "nan_amount":
        row[_T_AMOUNT] = "NaN"
    elif fault == "inf_created":
        row[_T_CREATED] = "infinity"
    else:
        raise ValueError(f"unknown fault {fault!r}")
    return row


def main(argv: list[str] | None = None) -> None:
    """`python -m pgstage.demo.generate OUT_DIR` for producing the data set by hand."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--orders-per-day", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--start", type=date.fromisoformat, default=date(2024, 1, 1))
    args = parser.parse_args(argv)
    paths = generate(args.out_dir, days=args.days, orders_per_day=args.orders_per_day,
                     seed=args.seed, start=args.start)
    print(f"wrote {len(paths)} files under {args.out_dir}")


if __name__ == "__main__":
    main()
