SELECT DISTINCT ON ("id", "day") *
FROM (SELECT 0 AS _file_no, 'orders0.csv' AS _source_file, _rec AS _record, "id", "v", "total", "email", "day", "status"
FROM "pgstage"."_chk_7_0_0"
UNION ALL
SELECT 1 AS _file_no, 'orders1.csv' AS _source_file, _rec AS _record, "id", "v", "total", "email", "day", "status"
FROM "pgstage"."_chk_7_1_0") u
ORDER BY "id", "day", _file_no DESC, _record DESC
