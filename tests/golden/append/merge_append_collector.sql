CREATE TABLE IF NOT EXISTS "pgstage"."_rp_7" AS
SELECT "id", "v", "total", "email", "day", "status", "_row_hash", "_source_file", "_record"
FROM "shop"."orders" WITH NO DATA
