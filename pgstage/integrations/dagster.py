"""pgstage as the first assets of a Dagster graph (`pip install "pgstage[dagster]"`).

One asset per target table, keyed `[schema, table]`, so a dbt source of the same schema and
table (dagster-dbt keys it `[source_name, table]`) is downstream with no configuration. Specs
that land in one table (the three sales feeds into `sales.orders`) are one asset: a Dagster
user sees and depends on the table, and one materialization of a day runs every feed of that
table for that day. Each day is a partition and the unit of work is pgstage's (pipeline, day),
the same unit `pgstage backfill` runs; a backfill runs one partition per run by default.
"""

# No `from __future__ import annotations`: Dagster reads the annotations of asset functions at definition time.

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgstage import (AnomalyBlocked, MissingDependency, PgstageError, RejectLimitExceeded, RunReport, Spec,
                     TableDescription, describe_table, load_spec, run)

try:
    import dagster as dg
except ImportError:  # pragma: no cover - exercised where the extra is absent
    raise MissingDependency("the Dagster integration needs dagster and dagster-dbt",
                            hint='pip install "pgstage[dagster]"') from None

EXIT_CODE_TAG = "pgstage/exit_code"      # on the Dagster run and in the failure's metadata: 3 threshold, 4 locked


class PgstageResource(dg.ConfigurableResource):  # type: ignore[misc]
    """Where pgstage loads: a database URL (else PGSTAGE_DATABASE_URL, else the embedded server).

    Pass the URL as `dg.EnvVar("PGSTAGE_DATABASE_URL")` so that a password never lands in
    Dagster's stored run configuration. `base_dir` is where the specs' relative source paths
    resolve (default: each spec's own directory).
    """

    database_url: str | None = None
    base_dir: str | None = None

    def run(self, spec: Spec, partition: str | None) -> RunReport:
        return run(spec, partition=partition, db=self.database_url,
                   base_dir=Path(self.base_dir) if self.base_dir else None)

    def describe(self, target: str) -> TableDescription:
        return describe_table(target, db=self.database_url)


class PgstageTranslator:
    """Asset key, group and description of a target table; subclass to override any of them."""

    def asset_key(self, target: str, specs: Sequence[Spec]) -> dg.AssetKey:
        return dg.AssetKey(list(specs[0].target))      # (schema, table); a bare table is in public

    def group_name(self, target: str, specs: Sequence[Spec]) -> str | None:
        return "pgstage"

    def description(self, target: str, specs: Sequence[Spec]) -> str:
        return f"{target}, loaded by pgstage from " + ", ".join(s.pipeline.name for s in specs)


def _always(specs: Sequence[Spec]) -> bool:
    return True


@dataclass(frozen=True)
class Check:
    """An asset check over one materialization's reports; `CHECKS` lists them.

    A check spec is declared with the asset, before any run, so both whether an asset has the
    check (`declared`) and whether it blocks (`blocking`) are decided from the asset's specs:
    an asset gets a check only when one of its specs configures what the check looks at.
    """

    name: str
    description: str
    evaluate: Callable[[Sequence[Spec], Sequence[RunReport]], "dg.AssetCheckResult"]
    blocking: Callable[[Sequence[Spec]], bool] = _always
    declared: Callable[[Sequence[Spec]], bool] = _always


def _reject_ratio(specs: Sequence[Spec], reports: Sequence[RunReport]) -> dg.AssetCheckResult:
    ratios = {r.pipeline: (r.counts.rejected / r.counts.read if r.counts.read else 0.0) for r in reports}
    limits = {s.pipeline.name: s.load.max_reject_ratio for s in specs}
    over = sorted(r.pipeline for r in reports if r.status == "rejected_threshold")
    return dg.AssetCheckResult(
        passed=not over, severity=dg.AssetCheckSeverity.ERROR,
        description=("rejects above max_reject_ratio in " + ", ".join(over) + ": nothing of those was merged")
        if over else "every feed under its max_reject_ratio",
        metadata={"ratios": ratios, "limits": limits, "over_limit": over})


def _label(report: RunReport, reports: Sequence[RunReport]) -> str:
    """A feed's name in check metadata; with a range of days in one run, the feed and its day."""
    several_days = len({r.partition for r in reports}) > 1
    return f"{report.pipeline} {report.partition}" if several_days else report.pipeline


# The verdicts of several feeds (or days) read as one: the worst wins.
_VERDICT_ORDER = ("flagged", "learning", "accepted", "ok", "no verdict")


def _volume_anomaly(specs: Sequence[Spec], reports: Sequence[RunReport]) -> dg.AssetCheckResult:
    """Flagged by pgstage's volume verdict (ops/anomalies.py) fails: ERROR where the feed blocks, else WARN.

    A unit that was skipped (its files were loaded before) judged nothing and has no verdict:
    it is listed under `no_verdict` and does not fail the check; its load's verdict is in
    `pgstage anomalies`. A feed blocked by the verdict merged nothing (exit 5).
    """
    actions = {s.pipeline.name: s.anomaly.action for s in specs}
    judged = [r for r in reports if actions.get(r.pipeline, "off") != "off"]
    verdicts = {_label(r, reports): _verdict_numbers(r.anomaly, r.run_id) for r in judged if r.anomaly}
    no_verdict = [_label(r, reports) for r in judged if not r.anomaly]
    flagged = [label for label, v in verdicts.items() if v["verdict"] == "flagged"]
    blocks = [label for label in flagged if verdicts[label]["action"] == "block"]
    overall = min((v["verdict"] for v in verdicts.values()), key=_VERDICT_ORDER.index, default="no verdict")
    if flagged:
        description = "volume anomaly: " + "; ".join(f"{label}: {verdicts[label]['reason']}" for label in flagged)
        if blocks:
            description += " (blocked, nothing merged: " + ", ".join(blocks) + ")"
    elif overall == "learning":
        description = "learning: " + "; ".join(f"{label}: {v['reason']}" for label, v in verdicts.items()
                                               if v["verdict"] == "learning")
    elif verdicts:
        description = "; ".join(f"{label}: {v['reason']}" for label, v in verdicts.items())
    else:
        description = "no verdict: nothing new was loaded (" + ", ".join(no_verdict) + " skipped)"
    metadata: dict[str, Any] = {"verdict": overall, "verdicts": verdicts, "flagged": flagged, "no_verdict": no_verdict}
    if len(verdicts) == 1:          # one feed: its numbers at the top, where Dagster plots them run after run
        [only] = verdicts.values()
        metadata.update({k: only[k] for k in ("observed", "expected_range", "score") if only[k] is not None})
    return dg.AssetCheckResult(passed=not flagged, description=description, metadata=metadata,
                               severity=dg.AssetCheckSeverity.ERROR if blocks else dg.AssetCheckSeverity.WARN)


def _verdict_numbers(anomaly: dict[str, Any], run_id: int | None) -> dict[str, Any]:
    return {"verdict": anomaly.get("verdict"), "reason": anomaly.get("reason"), "action": anomaly.get("action"),
            "observed": anomaly.get("read"), "expected_range": anomaly.get("expected"),
            "median": anomaly.get("median"), "score": anomaly.get("score"), "flags": anomaly.get("flags", []),
            "reject_ratio": anomaly.get("reject_ratio"), "run_id": run_id}


def _reconciliation(specs: Sequence[Spec], reports: Sequence[RunReport]) -> dg.AssetCheckResult:
    """The after-run reconciliation (ops/reconcile.py) found missing, different or extra rows: fails (ERROR).

    Only a run that merged is reconciled: a unit skipped (files loaded before), blocked or over
    its reject limit is listed under `not_reconciled` and does not fail the check. A
    reconciliation that could not run fails it: nothing says the target is right.
    """
    configured = {s.pipeline.name for s in specs if s.load.reconcile == "after_run"}
    done = {_label(r, reports): r.reconcile for r in reports if r.pipeline in configured and r.reconcile}
    not_reconciled = {_label(r, reports): r.status for r in reports if r.pipeline in configured and not r.reconcile}
    errors = {label: str(result["error"]) for label, result in done.items() if result.get("error")}
    found = {label: result for label, result in done.items() if result.get("differences")}
    totals = {kind: sum(int((result.get(kind) or {}).get("count", 0)) for result in done.values())
              for kind in ("missing", "different", "extra")}
    samples = {label: {kind: result[kind]["sample"] for kind in ("missing", "different", "extra")
                       if result.get(kind) and result[kind].get("count")} for label, result in found.items()}
    if found or errors:
        description = "; ".join([f"the target differs from the source in {label}: {result.get('summary')}"
                                 for label, result in found.items()]
                                + [f"could not reconcile {label}: {error}" for label, error in errors.items()])
    elif done:
        description = "the target holds what the source says"
    else:
        description = "nothing reconciled: no feed merged in this run"
    metadata: dict[str, Any] = {
        "configured": True, **totals, "samples": samples,
        "summaries": {label: result.get("summary") for label, result in done.items() if not result.get("error")},
        "errors": errors, "not_reconciled": not_reconciled,
        "not_configured": sorted(s.pipeline.name for s in specs if s.pipeline.name not in configured)}
    return dg.AssetCheckResult(passed=not (found or errors), severity=dg.AssetCheckSeverity.ERROR,
                               description=description, metadata=metadata)


CHECKS: tuple[Check, ...] = (
    Check("reject_ratio", "Rejected records under [load] max_reject_ratio; blocking, so nothing downstream"
          " builds on a load that exceeded it.", _reject_ratio),
    Check("volume_anomaly", "The run's volume against its history ([anomaly]); blocking where a feed of the"
          " table has action = \"block\", a warning otherwise.", _volume_anomaly,
          blocking=lambda specs: any(s.anomaly.action == "block" for s in specs),
          declared=lambda specs: any(s.anomaly.action != "off" for s in specs)),
    Check("reconciliation", "After each load the target is compared with the source ([load] reconcile ="
          " \"after_run\"); blocking, so nothing downstream builds on a table that lost or changed rows.",
          _reconciliation, declared=lambda specs: any(s.load.reconcile == "after_run" for s in specs)),
)


def pgstage_assets(specs: Sequence[Spec | str | Path], *, partitions_def: dg.PartitionsDefinition | None = None,
                   backfill_policy: dg.BackfillPolicy | None = None, translator: PgstageTranslator | None = None,
                   name: str = "pgstage") -> dg.AssetsDefinition:
    """A multi-asset with one asset per target table of `specs`, each with the checks of `CHECKS`.

    Provide the resource as `resources={"pgstage": PgstageResource(...)}`. With a partitions
    definition the partition key (a day, YYYY-MM-DD) is pgstage's `--partition`; the default
    backfill policy is one partition per run, so each Dagster run is one pgstage unit per feed.
    """
    translator = translator or PgstageTranslator()
    loaded = [s if isinstance(s, Spec) else load_spec(s) for s in specs]
    by_target: dict[str, list[Spec]] = {}
    for spec in loaded:
        by_target.setdefault(spec.pipeline.target, []).append(spec)
    keys = {target: translator.asset_key(target, group) for target, group in by_target.items()}
    asset_specs = [dg.AssetSpec(keys[target], group_name=translator.group_name(target, group),
                                description=translator.description(target, group), kinds={"pgstage", "postgres"},
                                metadata={"dagster/table_name": target,
                                          "pgstage/pipelines": [s.pipeline.name for s in group]})
                   for target, group in by_target.items()]
    check_specs = [dg.AssetCheckSpec(check.name, asset=keys[target], description=check.description,
                                     blocking=check.blocking(group))
                   for target, group in by_target.items() for check in CHECKS if check.declared(group)]
    if partitions_def is not None and backfill_policy is None:
        backfill_policy = dg.BackfillPolicy.multi_run(max_partitions_per_run=1)

    @dg.multi_asset(name=name, specs=asset_specs, check_specs=check_specs, partitions_def=partitions_def,
                    backfill_policy=backfill_policy, can_subset=True)
    def _load(context: dg.AssetExecutionContext, pgstage: PgstageResource) -> Iterator[Any]:
        days: list[str | None] = list(context.partition_keys) if context.has_partition_key_range or \
            context.has_partition_key else [None]
        for target, group in by_target.items():
            if keys[target] not in context.selected_asset_keys:
                continue
            reports = [_run_one(context, pgstage, spec, day) for day in days for spec in group]
            yield dg.MaterializeResult(
                asset_key=keys[target], metadata=_metadata(reports, pgstage.describe(target)),
                check_results=[_for_asset(check.evaluate(group, reports), keys[target], check.name)
                               for check in CHECKS
                               if dg.AssetCheckKey(keys[target], check.name) in context.selected_asset_check_keys])

    return _load


def _run_one(context: dg.AssetExecutionContext, pgstage: PgstageResource, spec: Spec, day: str | None) -> RunReport:
    """One pgstage unit. Over the reject threshold or blocked by a volume anomaly is a report (its
    check fails); any other error fails the step with pgstage's own message and its exit code in
    the run's tags."""
    try:
        report = pgstage.run(spec, day)
    except (RejectLimitExceeded, AnomalyBlocked) as exc:
        _tag(context, exc)
        carried: RunReport | None = getattr(exc, "report", None)   # the run's report: its counts and rules
        if carried is None:
            raise _failure(exc) from None
        context.log.warning(str(exc))
        report = carried
    except PgstageError as exc:
        _tag(context, exc)
        raise _failure(exc) from None
    context.log.info(f"{report.pipeline} {report.partition or ''}: {report.status}, run {report.run_id}")
    return report


def _tag(context: dg.AssetExecutionContext, exc: PgstageError) -> None:
    context.instance.add_run_tags(context.run.run_id, {EXIT_CODE_TAG: str(int(exc.exit_code))})


def _failure(exc: PgstageError) -> dg.Failure:
    return dg.Failure(description=str(exc), allow_retries=exc.exit_code == 4,
                      metadata={EXIT_CODE_TAG: int(exc.exit_code), "pgstage/error": type(exc).__name__})


def _for_asset(result: dg.AssetCheckResult, key: dg.AssetKey, name: str) -> dg.AssetCheckResult:
    """A check's result addressed to its asset (a multi-asset's results must name theirs)."""
    return dg.AssetCheckResult(passed=result.passed, severity=result.severity, description=result.description,
                               metadata=result.metadata, asset_key=key, check_name=name)


def _metadata(reports: Sequence[RunReport], table: TableDescription) -> dict[str, Any]:
    """Dagster's standard keys for the table, then the run's §5 counts summed over its feeds and each run."""
    totals: dict[str, int] = {}
    by_rule: dict[str, int] = {}
    for report in reports:
        for key, value in report.counts.as_dict().items():
            totals[key] = totals.get(key, 0) + value
        for rule, n in report.rejects_by_rule.items():
            by_rule[rule] = by_rule.get(rule, 0) + n
    return {
        "dagster/row_count": table.row_count,
        "dagster/column_schema": dg.TableSchema(columns=[
            dg.TableColumn(c.name, c.type, constraints=dg.TableColumnConstraints(nullable=c.nullable))
            for c in table.columns]),
        **{f"pgstage/{key}": value for key, value in totals.items()},
        "pgstage/rejects_by_rule": by_rule,
        "pgstage/run_ids": [r.run_id for r in reports],
        "pgstage/status": sorted({r.status for r in reports}),
        "pgstage/duration_s": round(sum(r.duration_s for r in reports), 3),
        "pgstage/runs": [r.as_dict() for r in reports],
    }
