INSERT INTO "shop"."orders" ("id", "v", "total", "email", "day", "status", "_row_hash", _loaded_at, _updated_at, _run_id)
SELECT "id", "v", "total", "email", "day", "status", "_row_hash", now(), now(), 7
FROM (SELECT DISTINCT ON ("id") "id", "v", "total", "email", "day", "status", "_row_hash", "_known"
FROM (SELECT c._rec, c."id", c."v", c."total", c."email", c."day", c."status", c."_row_hash", c."_known"
FROM "pgstage"."_chk_7_0_0" c
WHERE NOT EXISTS (SELECT 1
FROM "pgstage"."_dup_7" x
WHERE x._file = 0 AND x._rec = c._rec)) b
ORDER BY "id", "_rec" DESC) s
