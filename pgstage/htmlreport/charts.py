"""Charts of a page model, drawn by pygal as inline SVG (pure functions: model in, markup out).

pygal was chosen over plotly for these pages (docs/report.md has the comparison): the
same two charts weigh 36 KB as pygal SVG against 4.8 MB as plotly with its JavaScript
inlined, and pygal's SVG needs no script at all. Its tooltip script, which pygal would
fetch from the network, is switched off (`js=[]`): a report makes no request when opened.
Each chart is an <svg> with an id (`chart-<name>`) the browser tests look for.
"""

from __future__ import annotations

import re
from typing import Any

import pygal
from markupsafe import Markup
from pygal.style import Style

from pgstage.htmlreport.model import FUNNEL, PHASES, AnomalyDay, BatchSpan, HistoryDay, PauseSpan, RunPage

# One colour per §5 count, the same in every chart and in the tables' legend.
COLOURS = {
    "read": "#4c6ef5", "rejected": "#e03131", "valid": "#2f9e44", "duplicate": "#868e96",
    "inserted": "#37b24d", "updated": "#1c7ed6", "unchanged": "#adb5bd", "stale": "#f59f00", "deleted": "#862e9c",
    "stage": "#4c6ef5", "validate": "#f59f00", "merge": "#2f9e44", "paused": "#e03131", "waiting": "#e9ecef",
}
TRANSPARENT = "rgba(0,0,0,0)"
# Drawing widths close to the widths the page shows them at, so that their text stays legible.
WIDE, NARROW = 1000, 560


def _style(colours: list[str]) -> Style:
    return Style(background="transparent", plot_background="transparent", foreground="#212529",
                 foreground_strong="#212529", foreground_subtle="#ced4da", font_family="system-ui, sans-serif",
                 label_font_size=14, major_label_font_size=14, legend_font_size=14, title_font_size=16,
                 value_font_size=13, tooltip_font_size=13, opacity=".9", opacity_hover="1", colors=tuple(colours))


def _options(name: str, colours: list[str], **extra: Any) -> dict[str, Any]:
    # js=[]: no tooltip script from the network; no width/height, so the SVG scales to its box.
    return {"js": [], "style": _style(colours), "disable_xml_declaration": True, "explicit_size": False,
            "classes": ["pygal-chart", f"chart-{name}"],
            "legend_at_bottom": True, "truncate_legend": -1, "truncate_label": -1, "print_values": False,
            "margin": 12, **extra}


# pygal always writes its tooltip configuration as an inline <script>; with no tooltip script
# to read it, it is dead weight that a Content-Security-Policy without scripts would report.
# Its text is XML-escaped by pygal, so the first closing tag is the element's own.
_SCRIPT = re.compile(r"<script[^>]*>.*?</script>", re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


def _svg(chart: Any, name: str) -> Markup:
    """The chart's SVG markup without scripts, marked with `data-chart` for the page and the browser tests."""
    svg: str = chart.render(is_unicode=True)
    svg = _COMMENT.sub("", _SCRIPT.sub("", svg))
    return Markup(svg.replace("<svg ", f'<svg data-chart="{name}" role="img" aria-label="{name} chart" ', 1))


def funnel_chart(page: RunPage) -> Markup:
    """The §5 counts top to bottom: read, its split into rejected and valid, what the merge made of valid."""
    c = page.counts
    shown = [k for k in FUNNEL if c[k] or k in ("read", "rejected", "valid", "inserted")]
    chart = pygal.HorizontalBar(**_options("funnel", [COLOURS["read"]], width=WIDE, height=70 + 34 * len(shown),
                                           show_legend=False, print_values=True, print_values_position="top",
                                           value_formatter=lambda n: f"{n:,.0f}",
                                           title="rows: read → rejected / valid → duplicate / inserted / updated / …"))
    chart.x_labels = list(reversed(shown))            # pygal draws the first label at the bottom
    chart.add("rows", [{"value": c[k], "color": COLOURS[k]} for k in reversed(shown)])
    return _svg(chart, "funnel")


def rejects_chart(page: RunPage) -> Markup:
    """Rejected records per rule, the most frequent first (a record failing two rules counts under both)."""
    rules = page.rejects_by_rule[:15]
    chart = pygal.HorizontalBar(**_options("rejects", [COLOURS["rejected"]], show_legend=False, width=NARROW,
                                           height=max(180, 70 + 30 * len(rules)), title="rejected records by rule",
                                           print_values=True, print_values_position="top"))
    chart.x_labels = [rule for rule, _ in reversed(rules)]
    chart.add("rejects", [n for _, n in reversed(rules)])
    return _svg(chart, "rejects")


def timeline_chart(batches: tuple[BatchSpan, ...], pauses: tuple[PauseSpan, ...] = ()) -> Markup:
    """Each batch's stage, validate and merge on one clock; the grey gaps are its waits (a worker, its turn).

    A horizontal stacked bar per batch whose first, transparent segment is its offset from the run's start.
    Each throttle pause is a row of its own (`paused: reason`) among the batches, in time order: a
    pause holds the whole run, not one batch, so the batches' bars show the gap it left.
    """
    rows: list[tuple[str, dict[str, tuple[float, float]]]] = sorted(
        [(b.label, b.phases) for b in batches] + [(p.label, {"paused": (p.start, p.end)}) for p in pauses],
        key=lambda row: min((span[0] for span in row[1].values()), default=0.0))
    present = [p for p in PHASES if any(p in phases for _, phases in rows)]
    names: list[str] = []
    for i, phase in enumerate(present):
        names += ["offset" if i == 0 else f"queued for {phase}", phase]
    values: dict[str, list[float]] = {name: [] for name in names}
    for _, phases in reversed(rows):                  # pygal draws the first label at the bottom
        at = 0.0
        for i, phase in enumerate(present):
            wait = names[2 * i]
            span = phases.get(phase)
            if span is None:
                values[wait].append(0.0)
                values[phase].append(0.0)
                continue
            begin = max(span[0], at)
            values[wait].append(round(begin - at, 3))
            values[phase].append(round(max(span[1] - begin, 0.0), 3))
            at = max(at, span[1])
    colours = [TRANSPARENT if n == "offset" else COLOURS["waiting"] if n.startswith("queued") else COLOURS[n]
               for n in names]
    chart = pygal.HorizontalStackedBar(**_options("timeline", colours, width=WIDE,
                                                  height=max(220, 110 + 24 * len(rows)),
                                                  title="batches over time (seconds from the first stage)"))
    chart.x_labels = [label for label, _ in reversed(rows)]
    for name in names:
        chart.add(None if name == "offset" else name, values[name])
    return _svg(chart, "timeline")


def history_chart(history: tuple[HistoryDay, ...], anomalies: tuple[AnomalyDay, ...] = ()) -> Markup:
    """Records read and inserted per day; with #16's expected band and flagged runs once they exist."""
    keys = ["read", "inserted"]
    colours = [COLOURS[k] for k in keys]
    band = {a.day: a for a in anomalies}
    if band:
        colours += ["#868e96", "#868e96", "#e03131"]
    chart = pygal.Line(**_options("history", colours, width=WIDE, height=380, x_label_rotation=30 if len(history) > 10
                                  else 0, show_minor_x_labels=len(history) <= 31, title="records read and inserted per day",
                                  dots_size=3, include_x_axis=True, margin_right=48, value_formatter=lambda n: f"{n:,.0f}"))
    chart.x_labels = [h.day.isoformat() for h in history]
    for key in keys:
        chart.add(key, [h.counts[key] for h in history])
    if band:
        chart.add("expected low", [band[h.day].low if h.day in band else None for h in history],
                  stroke_style={"dasharray": "6, 4", "width": 2}, show_dots=False)
        chart.add("expected high", [band[h.day].high if h.day in band else None for h in history],
                  stroke_style={"dasharray": "6, 4", "width": 2}, show_dots=False)
        chart.add("flagged", [h.counts["read"] if h.day in band and band[h.day].flagged else None for h in history],
                  stroke=False, dots_size=8)
    return _svg(chart, "history")


def changes_chart(history: tuple[HistoryDay, ...]) -> Markup:
    """What each day changed besides inserts, and what it refused: on their own scale, not under `read`."""
    keys = ["rejected", "updated", "duplicate", "stale", "deleted"]
    keys = [k for k in keys if any(h.counts[k] for h in history)] or ["rejected"]
    chart = pygal.Bar(**_options("changes", [COLOURS[k] for k in keys], width=WIDE, height=320,
                                 x_label_rotation=30 if len(history) > 10 else 0,
                                 show_minor_x_labels=len(history) <= 31, title="rejected, updated and more per day", margin_right=48,
                                 value_formatter=lambda n: f"{n:,.0f}"))
    chart.x_labels = [h.day.isoformat() for h in history]
    for key in keys:
        chart.add(key, [h.counts[key] for h in history])
    return _svg(chart, "changes")
