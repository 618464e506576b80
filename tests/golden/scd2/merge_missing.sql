SELECT t.*
FROM "shop"."orders" t
WHERE t._is_current AND NOT t._is_deleted AND t._valid_from < '2024-01-16 00:00:00+00:00'::timestamptz AND '2024-01-16 00:00:00+00:00'::timestamptz >= (SELECT max(greatest(_valid_from, _valid_to))
FROM "shop"."orders") AND NOT EXISTS (SELECT 1
FROM "pgstage"."_seen_7" s
WHERE "s"."id" = "t"."id" AND "s"."day" = "t"."day")
