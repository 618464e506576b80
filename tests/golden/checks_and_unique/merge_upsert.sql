WITH every AS (SELECT DISTINCT ON ("id") "id", "v", "total", "email", "day", "status", "_raw", "_row_hash", "_known"
FROM (SELECT c._rec, c."id", c."v", c."total", c."email", c."day", c."status", c._raw_record AS "_raw", c."_row_hash", c."_known"
FROM "pgstage"."_chk_7_0_0" c) b
ORDER BY "id", "_rec" DESC), src AS (SELECT *
FROM every
WHERE NOT "_known"), w AS (INSERT INTO "shop"."orders" AS t ("id", "v", "total", "email", "day", "status", "_raw", "_row_hash", _loaded_at, _updated_at, _run_id) 
SELECT "id", "v", "total", "email", "day", "status", "_raw", "_row_hash", now(), now(), 7
FROM src
ON CONFLICT ("id") DO
UPDATE SET "v" = EXCLUDED."v", "total" = EXCLUDED."total", "email" = EXCLUDED."email", "day" = EXCLUDED."day", "status" = EXCLUDED."status", "_raw" = EXCLUDED."_raw", "_row_hash" = EXCLUDED."_row_hash", _updated_at = now(), _run_id = 7
WHERE NOT (("t"."v", "t"."total", "t"."email", "t"."day", "t"."status", "t"."_raw") IS NOT DISTINCT FROM ("excluded"."v", "excluded"."total", "excluded"."email", "excluded"."day", "excluded"."status", "excluded"."_raw")) 
RETURNING t."id", (t.xmax = 0) AS _inserted), r AS (SELECT s.*
FROM src s
WHERE NOT EXISTS (SELECT 1
FROM w
WHERE w."id" = s."id")), rc AS (SELECT count(*) FILTER (WHERE ("t"."v", "t"."total", "t"."email", "t"."day", "t"."status", "t"."_raw") IS NOT DISTINCT FROM ("r"."v", "r"."total", "r"."email", "r"."day", "r"."status", "r"."_raw")) AS u, count(*) FILTER (WHERE NOT (("t"."v", "t"."total", "t"."email", "t"."day", "t"."status", "t"."_raw") IS NOT DISTINCT FROM ("r"."v", "r"."total", "r"."email", "r"."day", "r"."status", "r"."_raw"))) AS st 
FROM r
JOIN "shop"."orders" t ON t."id" = r."id")
SELECT (SELECT count(*)
FROM every), count(*) FILTER (WHERE _inserted), count(*) FILTER (WHERE NOT _inserted), (SELECT count(*)
FROM every
WHERE "_known") + (SELECT u
FROM rc), (SELECT st
FROM rc), 0, count(*) FILTER (WHERE NOT _inserted)
FROM w
