SELECT count(t."id"), count(*)
FROM (SELECT hash_record_extended(ROW("s"."f1", "s"."f2", "s"."f3", "s"."f4", "s"."f5", "s"."f6"), 42) AS _h, CASE WHEN (NULLIF(NULLIF(NULLIF("f1", ''), 'NULL'), '-') IS NULL OR pg_input_is_valid(NULLIF(NULLIF(NULLIF("f1", ''), 'NULL'), '-'), 'bigint')) THEN (NULLIF(NULLIF(NULLIF("f1", ''), 'NULL'), '-'))::bigint END AS "_k0", CASE WHEN (NULLIF(NULLIF(NULLIF("f5", ''), 'NULL'), '-') IS NULL OR pgstage.try_to_timestamp(NULLIF(NULLIF(NULLIF("f5", ''), 'NULL'), '-'), 'DD/MM/YYYY') IS NOT NULL) THEN (pgstage.try_to_timestamp(NULLIF(NULLIF(NULLIF("f5", ''), 'NULL'), '-'), 'DD/MM/YYYY'))::date END AS "_k1"
FROM "pgstage"."_stg_7_0_0" s LIMIT 1000) s
LEFT JOIN LATERAL (SELECT *
FROM "Shop Data"."Order ""Lines""" t
WHERE t."id" = s."_k0" AND t."day" = s."_k1" AND t._row_hash = s._h LIMIT 1) t ON true
