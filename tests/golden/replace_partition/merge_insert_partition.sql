INSERT INTO "shop"."orders" ("id", "v", "total", "email", "day", "status", "_row_hash", _loaded_at, _updated_at, _run_id)
SELECT "id", "v", "total", "email", "day", "status", "_row_hash", now(), now(), 7
FROM "pgstage"."_rp_7"
