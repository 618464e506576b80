SELECT EXISTS (SELECT 1
FROM (SELECT "id", "v", "total", "email", "day", "status", "_row_hash", "_known"
FROM (SELECT c._rec, c."id", c."v", c."total", c."email", c."day", c."status", c."_row_hash", c."_known"
FROM "pgstage"."_chk_7_0_0" c
WHERE c._rec BETWEEN 1 AND 500) b) s, LATERAL (SELECT *
FROM "shop"."orders" t
WHERE t."id" = s."id" LIMIT 1) t)
