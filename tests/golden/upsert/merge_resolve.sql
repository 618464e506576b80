UPDATE pgstage.rejects j SET resolved_by = 7
FROM pgstage.runs r
WHERE r.run_id = j.run_id AND r.pipeline = 'orders' AND NOT r.dry_run AND j.run_id <> 7 AND j.resolved_by IS NULL AND (CASE WHEN (NULLIF(NULLIF(NULLIF((j.raw #>> '{Id}'), ''), 'NULL'), '-') IS NULL OR pg_input_is_valid(NULLIF(NULLIF(NULLIF((j.raw #>> '{Id}'), ''), 'NULL'), '-'), 'bigint')) THEN (NULLIF(NULLIF(NULLIF((j.raw #>> '{Id}'), ''), 'NULL'), '-'))::bigint END) IN (SELECT "id"
FROM "shop"."orders"
WHERE _run_id = 7)
