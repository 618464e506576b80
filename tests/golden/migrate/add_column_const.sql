ALTER TABLE "Shop Data"."Order ""Lines""" ADD COLUMN IF NOT EXISTS "source" text;
UPDATE "Shop Data"."Order ""Lines""" SET "source" = 'shop'::text
WHERE ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid AND "source" IS NULL AND 'shop'::text IS NOT NULL;
ALTER TABLE "Shop Data"."Order ""Lines""" ADD CONSTRAINT "_pgstage_not_null_source" CHECK ("source" IS NOT NULL) NOT VALID;
ALTER TABLE "Shop Data"."Order ""Lines""" VALIDATE CONSTRAINT "_pgstage_not_null_source";
ALTER TABLE "Shop Data"."Order ""Lines""" ALTER COLUMN "source" SET NOT NULL;
ALTER TABLE "Shop Data"."Order ""Lines""" DROP CONSTRAINT IF EXISTS "_pgstage_not_null_source";
-- rollback;
ALTER TABLE "Shop Data"."Order ""Lines""" DROP COLUMN IF EXISTS "source"
