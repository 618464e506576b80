SELECT count(*) <> count(DISTINCT "id")
FROM "pgstage"."_chk_7_0_0"
