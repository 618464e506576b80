CREATE TABLE "shop"."_pgstage_build_7" (LIKE "shop"."orders" INCLUDING DEFAULTS);
INSERT INTO "shop"."_pgstage_build_7" ("id", "v", "total", "email", "day", "status", "_row_hash", _loaded_at, _updated_at, _run_id)
SELECT "id", "v", "total", "email", "day", "status", "_row_hash", now(), now(), 7
FROM "pgstage"."_rp_7";
ALTER TABLE "shop"."_pgstage_build_7" ADD CONSTRAINT "_pgstage_bound_7" CHECK ("day" IS NOT NULL AND ("day" >= '2024-01-01'::date AND "day" < '2024-02-01'::date));
ALTER TABLE "shop"."orders" DETACH PARTITION "shop"."orders_p202401";
DROP TABLE "shop"."orders_p202401";
ALTER TABLE "shop"."orders" ATTACH PARTITION "shop"."_pgstage_build_7" FOR VALUES
FROM ('2024-01-01'::date) TO ('2024-02-01'::date);
ALTER TABLE "shop"."_pgstage_build_7" RENAME TO "orders_p202401";
ALTER TABLE "shop"."orders_p202401" DROP CONSTRAINT "_pgstage_bound_7"
