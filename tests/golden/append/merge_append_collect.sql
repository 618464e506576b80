INSERT INTO "pgstage"."_rp_7" ("id", "v", "total", "email", "day", "status", "_row_hash", "_source_file", "_record")
SELECT "id", "v", "total", "email", "day", "status", "_row_hash", "_source_file", "_record"
FROM (SELECT s.*, 'orders0.csv' AS _source_file
FROM (SELECT "id", "v", "total", "email", "day", "status", "_row_hash", "_known", b._rec AS _record
FROM (SELECT c._rec, c."id", c."v", c."total", c."email", c."day", c."status", c."_row_hash", c."_known"
FROM "pgstage"."_chk_7_0_0" c) b) s) r
