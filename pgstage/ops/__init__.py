"""Operating pgstage: structured logs, alerts, volume anomalies and reconciliation (SPEC §9).

Beside the pipeline, not in it: the run (pgstage/run/) calls these at a few named points, and none of
them can change a run's outcome except the anomaly check with `action = "block"`.
"""
