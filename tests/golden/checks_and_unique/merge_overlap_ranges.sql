WITH r AS (SELECT 0 AS b, %s::bigint AS lo, %s::bigint AS hi
UNION ALL
SELECT 1 AS b, %s::bigint AS lo, %s::bigint AS hi)
SELECT EXISTS (SELECT 1
FROM r a
JOIN r z ON a.b < z.b AND a.lo <= z.hi AND z.lo <= a.hi)
