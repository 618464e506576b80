CREATE INDEX CONCURRENTLY IF NOT EXISTS "by day" ON "Shop Data"."Order ""Lines""" ("day" DESC NULLS LAST, "id");
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "by_email" ON "Shop Data"."Order ""Lines""" ("email")
WHERE "email" IS NOT NULL AND "status" <> U&'x\0025y'
