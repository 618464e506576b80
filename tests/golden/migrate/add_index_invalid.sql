DROP INDEX CONCURRENTLY IF EXISTS "Shop Data"."by_email";
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "by_email" ON "Shop Data"."Order ""Lines""" ("email")
WHERE "email" IS NOT NULL AND "status" <> U&'x\0025y';
-- rollback;
DROP INDEX CONCURRENTLY IF EXISTS "Shop Data"."by_email"
