CREATE TEMP TABLE "_pgstage_scd" ON COMMIT DROP AS
SELECT v.*, t._scd_id AS _cur, CASE WHEN t._scd_id IS NULL THEN CASE WHEN v._vf < z._closed THEN 's' ELSE 'i' END WHEN v._vf < t._valid_from THEN 's' WHEN NOT t._is_deleted AND (v."total", v."status") IS NOT DISTINCT FROM (t."total", t."status") THEN 'u' WHEN v._vf = t._valid_from THEN 's' ELSE 'w' END AS _act
FROM (SELECT s.*, coalesce(s."day"::timestamp AT TIME ZONE 'UTC', '2024-01-16 00:00:00+00:00'::timestamptz) AS _vf
FROM (SELECT DISTINCT ON ("id", "day") "id", "v", "total", "email", "day", "status", "_row_hash", "_known"
FROM (SELECT c._rec, c."id", c."v", c."total", c."email", c."day", c."status", c."_row_hash", c."_known"
FROM "pgstage"."_chk_7_0_0" c
WHERE NOT EXISTS (SELECT 1
FROM "pgstage"."_dup_7" x
WHERE x._file = 0 AND x._rec = c._rec)) b
ORDER BY "id", "day", "day" DESC NULLS LAST, "_rec" DESC) s) v
LEFT JOIN "shop"."orders" t ON "t"."id" = "v"."id" AND "t"."day" = "v"."day" AND t._is_current
LEFT JOIN LATERAL (SELECT max(x._valid_to) AS _closed
FROM "shop"."orders" x
WHERE t._scd_id IS NULL AND "x"."id" = "v"."id" AND "x"."day" = "v"."day") z ON true;
ANALYZE "_pgstage_scd";
UPDATE "shop"."orders" t SET _valid_to = c._vf, _is_current = false, _updated_at = now(), _run_id = 7
FROM "_pgstage_scd" c
WHERE c._act = 'w' AND t._scd_id = c._cur AND t._is_current;
INSERT INTO "shop"."orders" ("id", "v", "total", "email", "day", "status", "_row_hash", _valid_from, _valid_to, _is_current, _scd_id, _is_deleted, _loaded_at, _updated_at, _run_id)
SELECT "id", "v", "total", "email", "day", "status", "_row_hash", _vf, NULL, true, md5(length((to_json("c"."id") #>> '{}')) || ':' || (to_json("c"."id") #>> '{}') || length((to_json("c"."day") #>> '{}')) || ':' || (to_json("c"."day") #>> '{}') || length((to_json((c._vf AT TIME ZONE 'UTC')) #>> '{}')) || ':' || (to_json((c._vf AT TIME ZONE 'UTC')) #>> '{}'))::uuid, false, now(), now(), 7
FROM "_pgstage_scd" c
WHERE _act IN ('i', 'w');
INSERT INTO "pgstage"."_seen_7" ("id", "day")
SELECT "id", "day"
FROM "_pgstage_scd";
SELECT count(*), count(*) FILTER (WHERE _act = 'i'), count(*) FILTER (WHERE _act = 'w'), count(*) FILTER (WHERE _act = 'u'), count(*) FILTER (WHERE _act = 's')
FROM "_pgstage_scd"
