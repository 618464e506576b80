WITH every AS (SELECT DISTINCT ON ("id", "day") "id", "v", "total", "email", "day", "status", "_row_hash", "_known"
FROM (SELECT c._rec, c."id", c."v", c."total", c."email", c."day", c."status", c."_row_hash", c."_known"
FROM "pgstage"."_chk_7_0_0" c) b
ORDER BY "id", "day", "_rec" DESC), src AS (SELECT *
FROM every
WHERE NOT "_known"), w AS (INSERT INTO "Shop Data"."Order ""Lines""" AS t ("id", "v", "total", "email", "day", "status", "_row_hash", _loaded_at, _updated_at, _run_id) 
SELECT "id", "v", "total", "email", "day", "status", "_row_hash", now(), now(), 7
FROM src
ON CONFLICT ("id", "day") DO NOTHING 
RETURNING t."id", t."day", (t.xmax = 0) AS _inserted), r AS (SELECT s.*
FROM src s
WHERE NOT EXISTS (SELECT 1
FROM w
WHERE w."id" = s."id" AND w."day" = s."day")), rc AS (SELECT count(*) FILTER (WHERE ("t"."v", "t"."total", "t"."email", "t"."status") IS NOT DISTINCT FROM ("r"."v", "r"."total", "r"."email", "r"."status")) AS u, count(*) FILTER (WHERE NOT (("t"."v", "t"."total", "t"."email", "t"."status") IS NOT DISTINCT FROM ("r"."v", "r"."total", "r"."email", "r"."status"))) AS st 
FROM r
JOIN "Shop Data"."Order ""Lines""" t ON t."id" = r."id" AND t."day" = r."day")
SELECT (SELECT count(*)
FROM every), count(*) FILTER (WHERE _inserted), count(*) FILTER (WHERE NOT _inserted), (SELECT count(*)
FROM every
WHERE "_known") + (SELECT u
FROM rc), (SELECT st
FROM rc), 0, count(*) FILTER (WHERE NOT _inserted)
FROM w
