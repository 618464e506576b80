"""Page model → one self-contained HTML document (jinja2, autoescaped: a reject's text is data).

The page carries its styles inline and its charts as inline SVG; its Content-Security-Policy
forbids every fetch and every script, so opening it makes no request even if a value slipped
past the escaping. Numbers the tests compare with the ledger carry `data-count` attributes.
"""

from __future__ import annotations

import json
from typing import Any

import jinja2
from markupsafe import Markup

from pgstage.htmlreport import charts
from pgstage.htmlreport.model import FUNNEL, BackfillPage, PipelinePage, RunPage

MAX_BATCHES = 100      # a timeline of more bars is unreadable, and a page of them heavy

_STYLE = """
:root{color-scheme:light;--muted:#6c757d;--line:#dee2e6}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#212529;background:#fff}
main{max-width:1100px;margin:0 auto;padding:16px}
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1.6rem 0 .4rem;border-bottom:1px solid var(--line)}
.muted{color:var(--muted)}
.badge{display:inline-block;padding:.1rem .5rem;border-radius:.6rem;color:#fff;font-weight:600;font-size:.85rem}
.s-succeeded{background:#2f9e44}.s-skipped{background:#1c7ed6}.s-running{background:#f59f00}
.s-failed,.s-rejected_threshold,.s-blocked{background:#e03131}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.1rem 1rem;margin:.5rem 0}
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:16px;align-items:start}
figure.chart{margin:0 0 12px}figure.chart svg{width:100%;height:auto;display:block}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{padding:.25rem .5rem;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.raw{font-family:ui-monospace,monospace;font-size:.85rem;white-space:pre-wrap;word-break:break-all;min-width:16rem;width:40%}
td.file{word-break:break-all;min-width:8rem}
summary{cursor:pointer;color:var(--muted)}
pre{background:#f8f9fa;padding:.75rem;overflow-x:auto;font-size:.85rem}
.key{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.3em;vertical-align:-.05em}
.months{display:flex;flex-wrap:wrap;gap:14px;margin:.5rem 0}
.month figcaption{font-size:.8rem;color:var(--muted);margin-bottom:2px}
.cal{display:grid;grid-template-columns:repeat(7,1.5rem);gap:2px}
.cal span{height:1.5rem;border-radius:3px;font-size:.7rem;text-align:center;line-height:1.5rem;color:#fff}
.u-succeeded{background:#2f9e44}.u-failed{background:#e03131}.u-running{background:#f59f00}
.u-pending{background:#dee2e6;color:#495057!important}.u-skipped{background:#1c7ed6}.u-none{background:transparent}
.legend span{margin-right:1rem;white-space:nowrap}
@media (max-width:600px){main{padding:8px}body{font-size:14px}}
"""

_BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>{% block title %}{% endblock %}</title><style>{{ style }}</style></head>
<body><main>{% block body %}{% endblock %}
<p class="muted">pgstage report{% if generated_at %} · generated {{ generated_at }}{% endif %}</p></main></body></html>
"""

_COUNTS_TABLE = """{% macro counts_row(counts, keys) %}{% for k in keys %}<td class="n" data-count="{{ k }}">{{ "{:,}".format(counts[k]) }}</td>{% endfor %}{% endmacro %}"""

# A backfill's units as month calendars (Monday first), one cell a (spec, day) unit coloured by status.
_CALENDAR = """{% macro legend(tally) %}<p class="legend">{% for status, n in tally.items() %}<span><span class="key u-{{ status }}"></span>{{ status }} <b data-units="{{ status }}">{{ "{:,}".format(n) }}</b></span>{% endfor %}</p>{% endmacro %}
{% macro calendar(months, pipeline) %}<div class="months" data-calendar="{{ pipeline }}">{% for m in months %}<figure class="month" data-month="{{ m.label }}"><figcaption>{{ m.label }}</figcaption><div class="cal">
{% for week in m.weeks %}{% for u in week %}{% if u %}<span class="u-{{ u.status }}" data-day="{{ u.day }}" title="{{ u.title }}">{{ u.day.day }}</span>{% else %}<span class="u-none"></span>{% endif %}{% endfor %}{% endfor %}
</div></figure>{% endfor %}</div>{% endmacro %}"""

_RUN = """{% extends "base" %}
""" + _COUNTS_TABLE + """
{% block title %}run {{ p.run_id }} · {{ p.pipeline }}{% endblock %}
{% block body %}
<header id="run-header">
<h1>run <span data-field="run_id">{{ p.run_id }}</span> · {{ p.pipeline }}{% if p.partition %} · {{ p.partition }}{% endif %}
 <span class="badge s-{{ p.status }}" data-field="status">{{ p.status }}</span>{% if p.dry_run %} <span class="badge s-running">dry run</span>{% endif %}</h1>
<dl class="facts">
<dt>target</dt><dd>{{ p.target }}</dd>
<dt>started</dt><dd>{{ p.started_at.strftime("%Y-%m-%d %H:%M:%S %Z") }}</dd>
<dt>finished</dt><dd>{{ p.finished_at.strftime("%Y-%m-%d %H:%M:%S %Z") if p.finished_at else "—" }}</dd>
<dt>duration</dt><dd data-field="duration_s">{{ "%.2f s"|format(p.duration_s) if p.duration_s is not none else "—" }}</dd>
<dt>attempts</dt><dd>{{ p.attempts }}</dd>
{% if p.host %}<dt>host</dt><dd>{{ p.host }} (pid {{ p.pid }})</dd>{% endif %}
{% if p.message %}<dt>message</dt><dd data-field="message">{{ p.message }}</dd>{% endif %}
{% if p.anomaly %}<dt>volume</dt><dd data-field="anomaly">{{ p.anomaly }}{% if p.anomaly_band %} <span class="muted">(expected {{ "{:,.0f}".format(p.anomaly_band[0]) }}–{{ "{:,.0f}".format(p.anomaly_band[1]) }} records)</span>{% endif %}</dd>{% endif %}
{% if p.reconcile %}<dt>reconcile</dt><dd data-field="reconcile">{{ p.reconcile.status }} ({{ p.reconcile.method }}): {{ p.reconcile.summary }}</dd>{% endif %}
</dl></header>

<section id="rows"><h2>Rows</h2>
<figure class="chart" id="chart-funnel">{{ funnel }}</figure>
<div class="grid"><div class="scroll"><table id="counts"><thead><tr><th>count</th><th class="n">rows</th></tr></thead><tbody>
{% for k in funnel_keys %}<tr><td><span class="key" style="background:{{ colours[k] }}"></span>{{ k }}</td><td class="n" data-count="{{ k }}">{{ "{:,}".format(p.counts[k]) }}</td></tr>{% endfor %}
</tbody></table>
</div><p class="muted">read = rejected + valid<br>valid = duplicate + inserted + updated + unchanged + stale<br>deleted: rows the merge removed from the target</p></div>
{% if p.files %}<div class="scroll"><table id="files"><thead><tr><th>file</th><th>status</th>{% for k in funnel_keys %}<th class="n">{{ k }}</th>{% endfor %}</tr></thead><tbody>
{% for f in p.files %}<tr data-file="{{ f.path }}"><td>{{ f.path }}</td><td>{{ f.status }}</td>{{ counts_row(f.counts, funnel_keys) }}</tr>{% endfor %}
</tbody></table></div>{% endif %}
</section>

<section id="rejects"><h2>Rejects</h2>
{% if p.rejects_by_rule %}
<div class="grid"><figure class="chart" id="chart-rejects">{{ rejects }}</figure>
<div class="scroll"><table id="rules"><thead><tr><th>rule</th><th class="n">records</th></tr></thead><tbody>
{% for rule, n in p.rejects_by_rule %}<tr><td>{{ rule }}</td><td class="n" data-rule="{{ rule }}">{{ "{:,}".format(n) }}</td></tr>{% endfor %}
</tbody></table></div></div>
<p>{{ "{:,}".format(p.rejected_records) }} rejected records; the first {{ p.samples|length }} by file and record:</p>
<div class="scroll"><table id="samples"><thead><tr><th>file</th><th class="n">record</th><th>reasons</th><th>raw values</th></tr></thead><tbody>
{% for s in p.samples %}<tr><td class="file">{{ s.file }}</td><td class="n">{{ s.record }}</td><td>{% for r in s.reasons %}<div>{{ r }}</div>{% endfor %}</td>
<td class="raw">{% for k, v in s.raw %}<div><span class="muted">{{ k }}:</span> {% if v is none %}<i class="muted">null</i>{% else %}<span class="value">{{ v }}</span>{% endif %}</div>{% endfor %}</td></tr>{% endfor %}
</tbody></table></div>
{% else %}<p>No record was rejected.</p>{% endif %}
</section>

<section id="timeline"><h2>Batches</h2>
{% if p.batches %}<figure class="chart" id="chart-timeline">{{ timeline }}</figure>
{% if p.batches|length > max_batches %}<p class="muted">the first {{ max_batches }} of {{ p.batches|length }} batches</p>{% endif %}
<div class="scroll"><table id="batches"><thead><tr><th>batch</th><th>records</th><th>status</th>{% for ph in phases %}<th class="n">{{ ph }} s</th>{% endfor %}</tr></thead><tbody>
{% for b in p.batches[:max_batches] %}<tr><td>{{ b.label }}</td><td>{{ "{:,}".format(b.records[0]) }}–{{ "{:,}".format(b.records[1]) }}</td><td>{{ b.status }}</td>
{% for ph in phases %}<td class="n">{% if ph in b.phases %}{{ "%.3f"|format(b.phases[ph][1] - b.phases[ph][0]) }}{% endif %}</td>{% endfor %}</tr>{% endfor %}
</tbody></table></div>{% endif %}
{% if p.pauses %}<div class="scroll"><table id="pauses"><thead><tr><th>paused by the throttle</th><th class="n">from s</th><th class="n">seconds</th><th>why</th></tr></thead><tbody>
{% for pz in p.pauses %}<tr data-pause="{{ pz.reason }}"><td>{{ pz.reason }}</td><td class="n">{{ "%.3f"|format(pz.start) }}</td><td class="n">{{ "%.3f"|format(pz.end - pz.start) }}</td><td>{{ pz.detail }}</td></tr>{% endfor %}
</tbody></table></div>{% endif %}
{% if p.untimed_batches %}<p class="muted">{{ p.untimed_batches }} batch(es) have no recorded timings (loaded by an earlier pgstage).</p>{% endif %}
{% if not p.batches and not p.untimed_batches %}<p>No batch was staged.</p>{% endif %}
</section>

<section id="spec"><h2>Spec</h2>
{% if p.spec is not none %}<details><summary>as resolved for this run{% if p.spec_path %}, from {{ p.spec_path }}{% endif %}; secrets masked</summary>
<pre>{{ spec_json }}</pre></details>{% else %}<p class="muted">This run did not record its spec{% if p.spec_path %} ({{ p.spec_path }}){% endif %}.</p>{% endif %}
</section>
{% endblock %}
"""

_PIPELINE = """{% extends "base" %}
""" + _COUNTS_TABLE + _CALENDAR + """
{% block title %}{{ p.pipeline }} · last {{ p.days }} days{% endblock %}
{% block body %}
<header><h1>{{ p.pipeline }}</h1>
<p class="muted">{% if p.first_day %}{{ p.first_day }} – {{ p.last_day }}: {% endif %}{{ p.runs|length }} runs over the last {{ p.days }} days of its history</p></header>

<section id="history"><h2>History</h2>
{% if p.history %}<figure class="chart" id="chart-history">{{ history }}</figure>
<figure class="chart" id="chart-changes">{{ changes }}</figure>
<div class="scroll"><table id="days"><thead><tr><th>day</th><th class="n">runs</th><th>status</th>{% for k in funnel_keys %}<th class="n">{{ k }}</th>{% endfor %}</tr></thead><tbody>
{% for h in p.history %}<tr data-day="{{ h.day }}"><td>{{ h.day }}</td><td class="n">{{ h.runs }}</td><td><span class="badge s-{{ h.status }}">{{ h.status }}</span></td>{{ counts_row(h.counts, funnel_keys) }}</tr>{% endfor %}
<tr id="totals"><th>total</th><th></th><th></th>{{ counts_row(p.totals, funnel_keys) }}</tr>
</tbody></table></div>{% else %}<p>No run of this pipeline in the ledger.</p>{% endif %}
</section>

{% if p.anomalies %}<section id="anomalies"><h2>Volume anomalies</h2>
<p class="muted">The history chart draws each day's expected band of records read (median ± its spread over
earlier runs of the same weekday) and the flagged days.</p>
{% set flagged = p.anomalies|selectattr("flagged")|list %}
{% if flagged %}<div class="scroll"><table id="flagged"><thead><tr><th>day</th><th class="n">run</th><th class="n">expected</th><th class="n">score</th><th class="n">training runs</th><th>verdict</th></tr></thead><tbody>
{% for a in flagged %}<tr data-flagged="{{ a.run_id }}"><td>{{ a.day }}</td><td class="n">{{ a.run_id if a.run_id is not none else "" }}</td><td class="n">{{ "{:,.0f}".format(a.low) }}–{{ "{:,.0f}".format(a.high) }}</td><td class="n">{{ "%.1f"|format(a.score) if a.score is not none else "" }}</td><td class="n">{{ a.training_runs }}</td><td>{{ a.verdict }}</td></tr>{% endfor %}
</tbody></table></div>{% else %}<p>No day was flagged.</p>{% endif %}
</section>{% endif %}

{% if p.backfill %}<section id="backfill"><h2>Backfill{% if p.backfill_id is not none %} {{ p.backfill_id }}{% endif %}</h2>
<p class="muted">this pipeline's units of its latest backfill, {{ p.backfill[0].day }} – {{ p.backfill[-1].day }}, by status{% if p.backfill_id is not none %} (every pipeline of it: <code>pgstage report --backfill {{ p.backfill_id }} --html FILE</code>){% endif %}</p>
{{ legend(p.backfill_tally) }}
{{ calendar(p.backfill_months, p.pipeline) }}
</section>{% endif %}

{% if p.reconciliations %}<section id="reconcile"><h2>Reconciliation</h2>
<div class="scroll"><table id="reconciliations"><thead><tr><th class="n">run</th><th>checked</th><th>partition</th><th>method</th><th>status</th><th class="n">missing</th><th class="n">extra</th><th class="n">different</th></tr></thead><tbody>
{% for r in p.reconciliations %}<tr data-reconciled="{{ r.run_id if r.run_id is not none else "" }}"><td class="n">{{ r.run_id if r.run_id is not none else "" }}</td><td>{{ r.checked_at.strftime("%Y-%m-%d %H:%M") }}</td><td>{{ r.partition or "" }}</td><td>{{ r.method }}</td><td title="{{ r.summary }}"><span class="badge s-{{ "succeeded" if r.status == "matched" else "failed" }}">{{ r.status }}</span></td><td class="n">{{ r.missing }}</td><td class="n">{{ r.extra }}</td><td class="n">{{ r.different }}</td></tr>{% endfor %}
</tbody></table></div></section>{% endif %}

<section id="runs"><h2>Runs</h2>
<div class="scroll"><table id="run-list"><thead><tr><th class="n">run</th><th>partition</th><th>status</th><th>started (UTC)</th><th class="n">seconds</th>{% for k in ("read", "rejected", "inserted", "updated") %}<th class="n">{{ k }}</th>{% endfor %}</tr></thead><tbody>
{% for r in p.runs %}<tr data-run="{{ r.run_id }}"><td class="n">{{ r.run_id }}</td><td>{{ r.partition or "" }}</td><td>{{ r.status }}</td><td>{{ r.started_at.strftime("%Y-%m-%d %H:%M:%S") }}</td>
<td class="n">{{ "%.2f"|format(r.duration_s) if r.duration_s is not none else "" }}</td>{{ counts_row(r.counts, ("read", "rejected", "inserted", "updated")) }}</tr>{% endfor %}
</tbody></table></div></section>
{% endblock %}
"""

_BACKFILL = """{% extends "base" %}
""" + _CALENDAR + """
{% block title %}backfill {{ p.backfill_id }}{% endblock %}
{% block body %}
<header><h1>backfill <span data-field="backfill_id">{{ p.backfill_id }}</span></h1>
<dl class="facts"><dt>days</dt><dd>{{ p.first_day }} – {{ p.last_day }}</dd>
<dt>pipelines</dt><dd>{{ p.calendars|map(attribute="pipeline")|join(", ") }}</dd>
<dt>created</dt><dd>{{ p.created_at.strftime("%Y-%m-%d %H:%M:%S %Z") }}</dd></dl>
{{ legend(p.tally) }}</header>
{% for c in p.calendars %}<section class="pipeline" data-pipeline="{{ c.pipeline }}"><h2>{{ c.pipeline }}</h2>
{{ legend(c.tally) }}
{{ calendar(c.months, c.pipeline) }}</section>{% endfor %}
{% if p.failures %}<section id="failures"><h2>Failed units</h2>
<div class="scroll"><table><thead><tr><th>day</th><th>pipeline</th><th class="n">run</th><th>why</th></tr></thead><tbody>
{% for name, u in p.failures[:max_failures] %}<tr data-failed="{{ name }} {{ u.day }}"><td>{{ u.day }}</td><td>{{ name }}</td><td class="n">{{ u.run_id if u.run_id is not none else "" }}</td><td>{{ u.message or "" }}</td></tr>{% endfor %}
</tbody></table></div>
{% if p.failures|length > max_failures %}<p class="muted">the first {{ max_failures }} of {{ p.failures|length }}; <code>pgstage backfill --join {{ p.backfill_id }} --retry-failed</code> runs them again</p>{% endif %}
</section>{% endif %}
{% endblock %}
"""

MAX_FAILURES = 200

_ENV = jinja2.Environment(loader=jinja2.DictLoader({"base": _BASE, "run": _RUN, "pipeline": _PIPELINE,
                                                    "backfill": _BACKFILL}),
                          autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _common() -> dict[str, Any]:
    return {"style": Markup(_STYLE), "funnel_keys": FUNNEL, "colours": charts.COLOURS}


def render_run(page: RunPage, generated_at: str | None = None) -> str:
    """The run page: header, row funnel, rejects, batch timeline and spec."""
    phases = [ph for ph in ("stage", "validate", "merge", "paused") if any(ph in b.phases for b in page.batches)]
    return _ENV.get_template("run").render(
        p=page, generated_at=generated_at, phases=phases, funnel=charts.funnel_chart(page),
        rejects=charts.rejects_chart(page) if page.rejects_by_rule else "",
        timeline=charts.timeline_chart(page.batches[:MAX_BATCHES], page.pauses) if page.batches else "",
        max_batches=MAX_BATCHES,
        spec_json=json.dumps(page.spec, indent=2, ensure_ascii=False) if page.spec is not None else "", **_common())


def render_pipeline(page: PipelinePage) -> str:
    """The pipeline page: records per day (with anomalies), backfill calendar and reconciliation once they exist."""
    return _ENV.get_template("pipeline").render(
        p=page, generated_at=page.generated_at.strftime("%Y-%m-%d %H:%M UTC") if page.generated_at else None,
        history=charts.history_chart(page.history, page.anomalies) if page.history else "",
        changes=charts.changes_chart(page.history) if page.history else "", **_common())


def render_backfill(page: BackfillPage) -> str:
    """The backfill page: its range, its units by status, one month calendar per pipeline, its failures."""
    return _ENV.get_template("backfill").render(
        p=page, generated_at=page.generated_at.strftime("%Y-%m-%d %H:%M UTC") if page.generated_at else None,
        max_failures=MAX_FAILURES, **_common())
