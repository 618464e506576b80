WITH src AS (SELECT DISTINCT ON ("id") "id", "v", "total", "email", "day", "status", "_row_hash", "_known"
FROM (SELECT c._rec, c."id", c."v", c."total", c."email", c."day", c."status", c."_row_hash", c."_known"
FROM "pgstage"."_chk_7_0_0" c) b
ORDER BY "id", "_rec" DESC), cls AS (SELECT s.*, CASE WHEN s."_known" THEN 'u' WHEN t."id" IS NULL THEN 'i' WHEN ("t"."v", "t"."total", "t"."email", "t"."day", "t"."status") IS NOT DISTINCT FROM ("s"."v", "s"."total", "s"."email", "s"."day", "s"."status") THEN 'u' ELSE 'w' END AS _act, t.ctid AS _ctid
FROM src s
LEFT JOIN "shop"."orders" t ON t."id" = s."id"), ins AS (
INSERT INTO "shop"."orders" ("id", "v", "total", "email", "day", "status", "_row_hash", _loaded_at, _updated_at, _run_id)
SELECT "id", "v", "total", "email", "day", "status", "_row_hash", now(), now(), 7
FROM cls
WHERE _act = 'i'
RETURNING 1), upd AS (
UPDATE "shop"."orders" t SET "v" = cls."v", "total" = cls."total", "email" = cls."email", "day" = cls."day", "status" = cls."status", "_row_hash" = cls."_row_hash", _updated_at = now(), _run_id = 7
FROM cls
WHERE cls._act = 'w' AND t.ctid = cls._ctid
RETURNING 1)
SELECT count(*), (SELECT count(*)
FROM ins), (SELECT count(*)
FROM upd), count(*) FILTER (WHERE _act = 'u'), count(*) FILTER (WHERE _act = 's'), 0, count(*) FILTER (WHERE _act IN ('w', 'd'))
FROM cls
