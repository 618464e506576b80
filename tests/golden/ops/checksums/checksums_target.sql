SELECT ('x' || lpad(substr(md5(ROW("id", 0)::text), 1, 8), 16, '0'))::bit(64)::bigint AS kh, ('x' || substr(md5(ROW("id", "customer", "updated_at", 0)::text), 1, 16))::bit(64)::bigint AS rh, jsonb_build_object('id', "id") AS key, jsonb_build_object('id', "id", 'customer', "customer", 'updated_at', "updated_at") AS row
FROM "app"."""Orders"""
WHERE "_deleted_at" IS NULL
