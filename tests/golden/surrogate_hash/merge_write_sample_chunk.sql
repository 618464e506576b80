SELECT count(t."id"), count(*) FILTER (WHERE t."id" IS NOT NULL AND NOT (("t"."v", "t"."total", "t"."email", "t"."status") IS NOT DISTINCT FROM ("s"."v", "s"."total", "s"."email", "s"."status")))
FROM (SELECT *
FROM (SELECT "id", "v", "total", "email", "day", "status", "_row_hash", "_known", md5(length((to_json("b"."id") #>> '{}')) || ':' || (to_json("b"."id") #>> '{}') || length((to_json("b"."day") #>> '{}')) || ':' || (to_json("b"."day") #>> '{}'))::uuid AS "order_uid"
FROM (SELECT c._rec, c."id", c."v", c."total", c."email", c."day", c."status", c."_row_hash", c."_known"
FROM "pgstage"."_chk_7_0_0" c
WHERE c._rec BETWEEN 1 AND 500) b) b
WHERE NOT b."_known" LIMIT 1000) s
LEFT JOIN LATERAL (SELECT *
FROM "shop"."orders" t
WHERE t."id" = s."id" AND t."day" = s."day" LIMIT 1) t ON true
