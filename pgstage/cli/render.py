"""Rendering of library results for people (rich) and machines (--json). Nothing else prints."""

from __future__ import annotations

import json
import shutil
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pgstage.report import RunReport

# Piped output (CI, logs) gets a wide default instead of rich's 80 columns.
console = Console(highlight=False, width=shutil.get_terminal_size((150, 40)).columns)

COUNT_KEYS = ("read", "rejected", "valid", "duplicate", "inserted", "updated", "unchanged", "stale")


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, default=str))


def report(rep: RunReport) -> None:
    """The end-of-run summary: status, the §5 counts per file and in total, rejects by rule."""
    colour = {"succeeded": "green", "skipped": "cyan", "rejected_threshold": "red", "blocked": "red",
              "failed": "red"}.get(rep.status, "white")
    title = f"run {rep.run_id} · {rep.pipeline}" + (f" · {rep.partition}" if rep.partition else "")
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column("file")
    table.add_column("status")
    for key in COUNT_KEYS:
        table.add_column(key, justify="right")
    for f in rep.files:
        table.add_row(Text(f.path), f.status, *(f"{getattr(f.counts, k):,}" for k in COUNT_KEYS))
    if len(rep.files) > 1:
        table.add_row("[bold]total[/]", "", *(f"[bold]{getattr(rep.counts, k):,}[/]" for k in COUNT_KEYS))
    console.print(table)
    if rep.rejects_by_rule:
        rules = ", ".join(f"{rule} {n:,}" for rule, n in rep.rejects_by_rule.items())
        console.print(f"rejects by rule: {rules}", markup=False)
    ignored = sorted({name for f in rep.files for name in f.ignored_fields})
    if ignored:
        console.print(f"source fields not used by the spec: {', '.join(ignored)}", markup=False)
    for sample in rep.sample_rejects:
        reasons = "; ".join(f"{r.get('column') or 'record'}.{r['rule']}: {r['message']}" for r in sample["reasons"])
        console.print(f"  reject {sample['file']} record {sample['record']}: {reasons}", markup=False)
    if rep.anomaly:
        console.print(f"volume: {rep.anomaly['verdict']} — {rep.anomaly['reason']}", markup=False)
    if rep.reconcile:
        console.print(f"reconcile: {rep.reconcile.get('summary') or rep.reconcile.get('error')}", markup=False)
    if rep.throttled_s:
        paused = ", ".join(f"{reason} {seconds:.1f}s" for reason, seconds in rep.throttled_s.items())
        console.print(f"paused by the throttle: {paused}", markup=False)
    if rep.dry_run and rep.merge_sql:
        console.print("the merge statement a real run would execute (first batch):", markup=False)
        console.print(rep.merge_sql, markup=False, soft_wrap=True)
    console.print(f"[{colour}]{'forecast' if rep.dry_run else rep.status}[/] into {escape(rep.target)} in {rep.duration_s:.2f}s"
                  + (f" — {escape(rep.message)}" if rep.message else ""))
    for warning in rep.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")


def runs_table(rows: list[dict[str, Any]]) -> None:
    table = Table(show_edge=False)
    for name in ("run", "pipeline", "partition", "status", "started (UTC)", "seconds", "read", "rejected", "inserted",
                 "updated"):
        table.add_column(name, justify="right" if name in ("run", "seconds", "read", "rejected", "inserted", "updated") else "left")
    for r in rows:
        counts = r.get("counts") or {}
        seconds = (r["finished_at"] - r["started_at"]).total_seconds() if r.get("finished_at") else None
        table.add_row(str(r["run_id"]), Text(r["pipeline"]), r["partition"] or "", r["status"],
                      f"{r['started_at']:%Y-%m-%d %H:%M:%S}", f"{seconds:.2f}" if seconds is not None else "",
                      *(f"{counts.get(k, 0):,}" for k in ("read", "rejected", "inserted", "updated")))
    console.print(table)


def run_details(run: dict[str, Any], samples: list[dict[str, Any]]) -> None:
    console.print(f"[bold]run {run['run_id']}[/] {escape(run['pipeline'])}"
                  + (f" partition {run['partition']}" if run["partition"] else "")
                  + f" → {escape(run['target'])}: [bold]{run['status']}[/]")
    console.print(f"started {run['started_at']:%Y-%m-%d %H:%M:%S} UTC on {run['host']} (pid {run['pid']})"
                  + (f", finished {run['finished_at']:%H:%M:%S}" if run["finished_at"] else "")
                  + f"; attempts: {run.get('attempts', 1)}", markup=False)
    if run.get("message"):
        console.print(f"message: {run['message']}", markup=False)
    counts = run.get("counts") or {}
    if counts:
        console.print("rows: " + ", ".join(f"{k} {counts.get(k, 0):,}" for k in (*COUNT_KEYS, "deleted")), markup=False)
    for f in run.get("files") or []:
        rows = f.get("rows") or {}
        console.print(f"  {f['path']}: {f['status']}, read {rows.get('read', 0):,}, rejected {rows.get('rejected', 0):,}", markup=False)
    batches = run.get("batches") or []
    if len(batches) > 1:
        console.print(f"batches: {len(batches)}, " + ", ".join(
            f"{b['batch_no']}: records {b['record_start']:,}-{b['record_end']:,} {b['status']}" for b in batches[:12])
            + (" …" if len(batches) > 12 else ""), markup=False)
    pauses = run.get("pauses") or []
    if pauses:
        console.print(f"paused {len(pauses)} time(s), {sum(p['seconds'] for p in pauses):.1f} s in all:", markup=False)
        for p in pauses[:12]:
            console.print(f"  {p['started_at']:%H:%M:%S} {p['seconds']:.1f} s {p['reason']}: {p['detail']}", markup=False)
        if len(pauses) > 12:
            console.print(f"  … {len(pauses) - 12} more (--json lists them all)", markup=False)
    merged_chunks = run.get("chunks") or []
    if merged_chunks:
        console.print(f"merge chunks: {len(merged_chunks)} committed", markup=False)
        by_batch: dict[tuple[str, int], list[int]] = {}
        for c in merged_chunks:
            by_batch.setdefault((c["file"], c["batch_no"]), []).append(c["record_end"])
        for (file, batch_no), ends in list(by_batch.items())[:12]:
            console.print(f"  {file} batch {batch_no}: up to records " + ", ".join(f"{e:,}" for e in ends), markup=False)
        if len(by_batch) > 12:
            console.print(f"  … {len(by_batch) - 12} more batches (--json lists them all)", markup=False)
    if run.get("anomaly"):
        a = run["anomaly"]
        console.print(f"volume: {a['verdict']}{' (accepted)' if a.get('accepted') else ''} — {a['reason']}"
                      + (f"; score {a['score']}" if a.get("score") is not None else "")
                      + f"; training runs {len(a.get('training_runs') or [])}", markup=False)
    if run.get("reconcile"):
        r = run["reconcile"]
        console.print(f"reconcile ({r.get('method', '')}): {r.get('summary') or r.get('error')}"
                      + (f", {r['in_flight']:,} in flight" if r.get("in_flight") else ""), markup=False)
    if run.get("rejects_by_rule"):
        console.print("rejects by rule: " + ", ".join(f"{k} {v:,}" for k, v in run["rejects_by_rule"].items()), markup=False)
    if samples:
        table = Table(title="sample rejects", title_justify="left", show_edge=False)
        for name in ("file", "record", "reasons"):
            table.add_column(name)
        for s in samples:
            reasons = "; ".join(f"{r.get('column') or 'record'}.{r['rule']}: {r['message']}" for r in s["reasons"])
            table.add_row(Text(s["file"]), str(s["record"]), Text(reasons))
        console.print(table)
