CREATE UNLOGGED TABLE "pgstage"."_stg_7_1_0" AS
SELECT (101 + row_number() OVER () - 1)::bigint AS _rec, t."_raw" AS doc, t."id" AS "_key_0", t."day" AS "_key_1"
FROM "Shop Data"."Order ""Lines""" t
WHERE t.ctid >= '(10,0)'::tid AND t.ctid < '(20,0)'::tid AND t."_raw" IS NOT NULL AND t."_run_id" IS DISTINCT FROM 7 AND ("id" > 0)
