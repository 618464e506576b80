WITH src AS (SELECT DISTINCT ON ("id") "id", "v", "total", "email", "day", "status", "_row_hash", "_known"
FROM (SELECT c._rec, c."id", c."v", c."total", c."email", c."day", c."status", c."_row_hash", c."_known"
FROM "pgstage"."_chk_7_0_0" c) b
ORDER BY "id", "_rec" DESC), cls AS (SELECT s.*, CASE WHEN s."_known" THEN 'u' WHEN t."id" IS NULL THEN 'i' WHEN ("t"."v", "t"."total", "t"."email", "t"."day", "t"."status") IS NOT DISTINCT FROM ("s"."v", "s"."total", "s"."email", "s"."day", "s"."status") THEN 'u' ELSE 'w' END AS _act, t.ctid AS _ctid
FROM src s
LEFT JOIN "shop"."orders" t ON t."id" = s."id")
SELECT count(*), count(*) FILTER (WHERE _act = 'i'), count(*) FILTER (WHERE _act IN ('w', 'd')), count(*) FILTER (WHERE _act = 'u'), count(*) FILTER (WHERE _act = 's')
FROM cls
