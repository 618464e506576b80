ALTER TABLE "Shop Data"."Order ""Lines""" ADD CONSTRAINT "_pgstage_not_null_email" CHECK ("email" IS NOT NULL) NOT VALID;
ALTER TABLE "Shop Data"."Order ""Lines""" VALIDATE CONSTRAINT "_pgstage_not_null_email";
ALTER TABLE "Shop Data"."Order ""Lines""" ALTER COLUMN "email" SET NOT NULL;
ALTER TABLE "Shop Data"."Order ""Lines""" DROP CONSTRAINT IF EXISTS "_pgstage_not_null_email";
-- rollback;
ALTER TABLE "Shop Data"."Order ""Lines""" ALTER COLUMN "email" DROP NOT NULL
