SELECT run_id, day, read, rejected
FROM (
SELECT DISTINCT ON (coalesce(partition, run_id::text)) run_id,  coalesce(CASE WHEN partition ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}$' THEN partition::date END,           (started_at AT TIME ZONE 'UTC')::date) AS day,  (counts->>'read')::bigint AS read, (counts->>'rejected')::bigint AS rejected
FROM pgstage.runs
WHERE pipeline = %(pipeline)s AND run_id < %(run)s AND NOT dry_run  AND counts IS NOT NULL  AND (status = 'succeeded' OR (anomaly->>'accepted')::boolean)  AND (coalesce(anomaly->>'verdict', '') <> 'flagged' OR (anomaly->>'accepted')::boolean)
ORDER BY coalesce(partition, run_id::text), run_id DESC) h
ORDER BY day DESC, run_id DESC LIMIT %(most)s
