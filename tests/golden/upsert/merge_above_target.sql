SELECT CASE WHEN EXISTS (SELECT 1
FROM pg_index i
JOIN pg_class x ON x.oid = i.indexrelid
JOIN pg_am m ON m.oid = x.relam
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
WHERE i.indrelid = %s::regclass AND a.attname = %s AND m.amname = 'btree' AND i.indisvalid AND i.indpred IS NULL) THEN (SELECT max(t."id")
FROM "shop"."orders" t) < %s::bigint END
