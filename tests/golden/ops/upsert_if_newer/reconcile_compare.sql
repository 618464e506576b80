CREATE TEMPORARY TABLE "pgstage_reconcile" ON COMMIT DROP AS
SELECT jsonb_build_object('id', "s"."id") AS key, CASE WHEN t.ctid IS NULL THEN 'missing' WHEN cardinality(d.cols) = 0 THEN 'same' WHEN t."v" > s."v" THEN 'newer' ELSE 'different' END AS kind, d.cols
FROM (SELECT DISTINCT ON ("id") *
FROM (SELECT 0 AS _file_no, 'orders0.csv' AS _source_file, _rec AS _record, "id", "v", "total", "email", "day", "status"
FROM "pgstage"."_chk_7_0_0"
UNION ALL
SELECT 1 AS _file_no, 'orders1.csv' AS _source_file, _rec AS _record, "id", "v", "total", "email", "day", "status"
FROM "pgstage"."_chk_7_1_0") u
ORDER BY "id", "v" DESC NULLS LAST, _file_no DESC, _record DESC) s
LEFT JOIN "shop"."orders" t ON t."id" = s."id"
CROSS JOIN LATERAL (SELECT array_remove(ARRAY[CASE WHEN s."v" IS DISTINCT FROM t."v" THEN 'v' END, CASE WHEN s."total" IS DISTINCT FROM t."total" THEN 'total' END, CASE WHEN s."email" IS DISTINCT FROM t."email" THEN 'email' END, CASE WHEN s."day" IS DISTINCT FROM t."day" THEN 'day' END, CASE WHEN s."status" IS DISTINCT FROM t."status" THEN 'status' END]::text[], NULL) AS cols) d
