SELECT count(*) FILTER (WHERE _reasons IS NOT NULL), (min("id") FILTER (WHERE _reasons IS NULL))::text, (max("id") FILTER (WHERE _reasons IS NULL))::text
FROM "pgstage"."_chk_7_0_0"
