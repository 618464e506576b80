ALTER TABLE "Shop Data"."Order ""Lines""" DROP COLUMN IF EXISTS "legacy";
-- rollback
