SELECT c.key, sum(c.value::bigint) FROM pgstage.backfill_units u JOIN pgstage.runs r USING (run_id), jsonb_each_text(r.counts) c WHERE u.backfill_id = %s AND u.status = 'succeeded' GROUP BY c.key
