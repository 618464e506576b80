SELECT count(t."id"), count(*) FILTER (WHERE t."id" IS NOT NULL AND NOT (("t"."v", "t"."total", "t"."email", "t"."day", "t"."status") IS NOT DISTINCT FROM ("s"."v", "s"."total", "s"."email", "s"."day", "s"."status")))
FROM (SELECT *
FROM (SELECT "id", "v", "total", "email", "day", "status", "_row_hash", "_known"
FROM (SELECT c._rec, c."id", c."v", c."total", c."email", c."day", c."status", c."_row_hash", c."_known"
FROM "pgstage"."_chk_7_0_0" c) b) b
WHERE NOT b."_known" LIMIT 1000) s
LEFT JOIN LATERAL (SELECT *
FROM "shop"."orders" t
WHERE t."id" = s."id" LIMIT 1) t ON true
