INSERT INTO "shop"."orders" ("id", "v", "total", "email", "day", "status", "_row_hash", "_source_file", "_record", _loaded_at, _updated_at, _run_id)
SELECT "id", "v", "total", "email", "day", "status", "_row_hash", "_source_file", "_record", now(), now(), 7
FROM (SELECT s.*, 'orders0.csv' AS _source_file
FROM (SELECT "id", "v", "total", "email", "day", "status", "_row_hash", "_known", b._rec AS _record
FROM (SELECT c._rec, c."id", c."v", c."total", c."email", c."day", c."status", c."_row_hash", c."_known"
FROM "pgstage"."_chk_7_0_0" c) b) s) r
