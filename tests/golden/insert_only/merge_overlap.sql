WITH r AS (SELECT 0 AS b, min("id") AS lo, max("id") AS hi
FROM "pgstage"."_chk_7_0_0"
UNION ALL
SELECT 1 AS b, min("id") AS lo, max("id") AS hi
FROM "pgstage"."_chk_7_1_0")
SELECT EXISTS (SELECT 1
FROM r a
JOIN r z ON a.b < z.b AND a.lo <= z.hi AND z.lo <= a.hi)
