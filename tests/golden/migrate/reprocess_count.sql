SELECT count(*)
FROM "Shop Data"."Order ""Lines""" t, "pgstage"."_chk_7_1_0" c, "pgstage"."_stg_7_1_0" s
WHERE c._rec = s._rec AND t."id" = s."_key_0" AND t."day" = s."_key_1" AND (ROW(t."email", t."status", t."total", t."source")) IS DISTINCT FROM (ROW(c."email", c."status", c."total", c."source"))
