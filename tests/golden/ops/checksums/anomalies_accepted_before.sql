SELECT EXISTS (SELECT 1
FROM pgstage.runs
WHERE pipeline = %s AND partition = %s AND run_id < %s AND (anomaly->>'accepted')::boolean)
