CREATE TABLE "pgstage"."_dup_7" WITH (autovacuum_enabled = false, toast.autovacuum_enabled = false) AS
SELECT _file, _batch, _rec
FROM (
SELECT _file, _batch, _rec, row_number() OVER (PARTITION BY "id", "day"
ORDER BY "_file" DESC, "_rec" DESC) AS _rank
FROM (SELECT 0 AS _file, 0 AS _batch, _rec, "id", "day"
FROM "pgstage"."_chk_7_0_0"
UNION ALL
SELECT 1 AS _file, 0 AS _batch, _rec, "id", "day"
FROM "pgstage"."_chk_7_1_0") u) r
WHERE _rank > 1
