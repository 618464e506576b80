SELECT count(*) <> count(DISTINCT ("id", "day"))
FROM "pgstage"."_chk_7_0_0"
