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

from pgstage import (MissingDependency, PgstageError, RejectLimitExceeded, RunReport, Spec, TableDescription,
                     describe_table, load_spec, run)

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


@dataclass(frozen=True)
class Check:
    """An asset check over one materialization's reports. The seam for more checks: the
    volume-anomaly verdict and reconciliation (issue #16) join `CHECKS` here when they exist."""

    name: str
    description: str
    blocking: bool
    evaluate: Callable[[Sequence[Spec], Sequence[RunReport]], "dg.AssetCheckResult"]


def _reject_ratio(specs: Sequence[Spec], reports: Sequence[RunReport]) -> dg.AssetCheckResult:
    ratios = {r.pipeline: (r.counts.rejected / r.counts.read if r.counts.read else 0.0) for r in reports}
    limits = {s.pipeline.name: s.load.max_reject_ratio for s in specs}
    over = sorted(r.pipeline for r in reports if r.status == "rejected_threshold")
    return dg.AssetCheckResult(
        passed=not over, severity=dg.AssetCheckSeverity.ERROR,
        description=("rejects above max_reject_ratio in " + ", ".join(over) + ": nothing of those was merged")
        if over else "every feed under its max_reject_ratio",
        metadata={"ratios": ratios, "limits": limits, "over_limit": over})


CHECKS: tuple[Check, ...] = (
    Check("reject_ratio", "Rejected records under [load] max_reject_ratio; blocking, so nothing downstream"
          " builds on a load that exceeded it.", True, _reject_ratio),
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
    check_specs = [dg.AssetCheckSpec(check.name, asset=key, description=check.description, blocking=check.blocking)
                   for key in keys.values() for check in CHECKS]
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
                check_results=[dg.AssetCheckResult(**{**_as_kwargs(check.evaluate(group, reports)),
                                                      "asset_key": keys[target], "check_name": check.name})
                               for check in CHECKS
                               if dg.AssetCheckKey(keys[target], check.name) in context.selected_asset_check_keys])

    return _load


def _run_one(context: dg.AssetExecutionContext, pgstage: PgstageResource, spec: Spec, day: str | None) -> RunReport:
    """One pgstage unit. Over the reject threshold is a report (its check fails); any other
    error fails the step with pgstage's own message and its exit code in the run's tags."""
    try:
        report = pgstage.run(spec, day)
    except RejectLimitExceeded as exc:
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


def _as_kwargs(result: dg.AssetCheckResult) -> dict[str, Any]:
    return {"passed": result.passed, "severity": result.severity, "description": result.description,
            "metadata": result.metadata}


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
