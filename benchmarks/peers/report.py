"""The one table of a peers run, and the pgstage-vs-peers ratios read off it.

Ratios are this row's seconds over the reference's, measured in the same run: above 1 means
slower. A sampled peer's seconds are extrapolated from its rate on the sample, and marked `~`;
a step that failed shows the seconds until it failed in parentheses, and no ratio.
"""

from __future__ import annotations

import statistics
from typing import Any

REFERENCES = (("naive", "naive", "initial"), ("bare_sql", "bare_sql", "initial"),
              ("bare_sql_incremental", "bare_sql", "incremental"), ("initial", "pgstage", "initial"),
              ("incremental", "pgstage", "incremental"))
# step -> (column, reference measurement) pairs
RATIOS = {"initial": (("vs_naive", "naive"), ("vs_bare_sql", "bare_sql")),
          "incremental": (("vs_bare_sql", "bare_sql_incremental"),)}


def _seconds(step: dict[str, Any]) -> float | None:
    """Seconds for the whole file: measured, or for a sample extrapolated from its rate. None if it failed."""
    if not step.get("ok") or not step.get("seconds"):
        return None
    if step.get("sampled"):
        return float(step["file_rows"] * step["seconds"] / max(1, step.get("rows_sent", 0)))
    return float(step["seconds"])


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(reference: dict[str, list[dict[str, Any]]], steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per reference measurement and per peer step: medians over rounds, the last round's outcome."""
    ref_s = {name: statistics.median(r["seconds"] for r in runs) for name, runs in reference.items()}
    out: list[dict[str, Any]] = []
    for name, label, step in REFERENCES:
        if name in reference:
            runs = reference[name]
            row = {"peer": label, "key": name, "step": step, "seconds": ref_s[name], "extrapolated": False,
                   "rows_per_s": runs[0]["rows"] / ref_s[name], "rounds": len(runs), "rows_after": None,
                   "peak_rss_mb": max(r["maxrss_kb"] for r in runs) / 1024, "outcome": "reference", "ok": True}
            out.append(_ratios(row, ref_s) if label == "pgstage" else row)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in steps:
        groups.setdefault((s["peer"], s["step"]), []).append(s)
    for rounds in groups.values():
        last = rounds[-1]
        seconds = _median([_seconds(s) for s in rounds])
        ok = [s for s in rounds if _seconds(s) is not None]
        sent = last.get("rows_sent") or last["file_rows"]
        outcome = last["outcome"] + (f" ({len(ok)} of {len(rounds)} rounds ok)" if 0 < len(ok) < len(rounds) else "")
        rss = [s["maxrss_kb"] for s in rounds if s.get("maxrss_kb")]
        row = {"peer": last["label"], "key": last["peer"], "step": last["step"], "seconds": seconds,
               "failed_after_s": None if ok else _median([s.get("seconds") for s in rounds]),
               "measured_seconds": _median([s.get("seconds") for s in ok]),
               "extrapolated": bool(seconds and last.get("sampled") and sent < last["file_rows"]),
               "rows_per_s": last["file_rows"] / seconds if seconds else None, "rounds": len(rounds),
               "peak_rss_mb": max(rss) / 1024 if rss else None, "rows_after": (last.get("target") or {}).get("rows"),
               "outcome": outcome, "ok": bool(last.get("ok")), "correct": last.get("correct"),
               "idempotent": last.get("idempotent"), "upserts": last.get("upserts")}
        out.append(_ratios(row, ref_s))
    return out


def _ratios(row: dict[str, Any], ref_s: dict[str, float]) -> dict[str, Any]:
    for column, ref in RATIOS.get(row["step"], ()):
        if row["seconds"] and ref in ref_s:
            row[column] = row["seconds"] / ref_s[ref]
    return row


def headline(summary: list[dict[str, Any]]) -> list[str]:
    """pgstage against the fastest upserting peer measured on the whole file, per step.

    Also the fastest whose result was right, when that is another peer, and an extrapolated
    (sampled) peer when it would have been faster: a sample's rate is not a measurement of the file.
    """
    lines = []
    pgstage = {r["step"]: r for r in summary if r["peer"] == "pgstage"}
    for step, ours in pgstage.items():
        peers = [r for r in summary if r.get("upserts") and r["step"] == step and r["seconds"]]
        measured = [r for r in peers if not r["extrapolated"]]
        if not measured:
            continue
        fastest = min(measured, key=lambda r: r["seconds"])
        lines.append(_versus(ours, fastest, "fastest upserting peer"))
        right = [r for r in measured if r.get("correct")]
        if right and (best := min(right, key=lambda r: r["seconds"])) is not fastest:
            lines.append(_versus(ours, best, "fastest upserting peer with a correct result"))
        for r in peers:
            if r["extrapolated"] and r["seconds"] < fastest["seconds"]:
                lines.append(_versus(ours, r, "an extrapolated sample"))
    return lines


def _versus(ours: dict[str, Any], peer: dict[str, Any], what: str) -> str:
    return (f"pgstage {ours['step']} vs {what} ({peer['peer']}{', extrapolated' if peer['extrapolated'] else ''}): "
            f"{ours['seconds']:.2f} s / {peer['seconds']:.2f} s = {ours['seconds'] / peer['seconds']:.2f}x")


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return f"{value:{spec}}{suffix}" if value is not None else "-"


def table(summary: list[dict[str, Any]], outcome_width: int = 110) -> str:
    head = (f"{'peer':<32} {'step':<11} {'seconds':>9} {'rows/s':>9} {'RSS MB':>7} {'vs naive':>8} "
            f"{'vs bare':>8} {'rows after':>10}  outcome")
    lines = [head, "-" * len(head)]
    for r in summary:
        secs = ("~" if r["extrapolated"] else "") + _fmt(r["seconds"], ".2f")
        if r.get("failed_after_s") is not None:
            secs = f"({r['failed_after_s']:.2f})"
        outcome = r["outcome"] if len(r["outcome"]) <= outcome_width else r["outcome"][:outcome_width - 1] + "…"
        lines.append(f"{r['peer']:<32} {r['step']:<11} {secs:>9} {_fmt(r['rows_per_s'], ',.0f'):>9} "
                     f"{_fmt(r['peak_rss_mb'], '.0f'):>7} {_fmt(r.get('vs_naive'), '.2f', 'x'):>8} "
                     f"{_fmt(r.get('vs_bare_sql'), '.2f', 'x'):>8} {_fmt(r['rows_after'], ','):>10}  {outcome}")
    return "\n".join(lines)
