ALTER TABLE "Shop Data"."Order ""Lines""" ADD COLUMN IF NOT EXISTS "_pgstage_new_id" bigint;
CREATE OR REPLACE TRIGGER "_pgstage_copy_id" BEFORE INSERT OR
UPDATE ON "Shop Data"."Order ""Lines""" FOR EACH ROW EXECUTE FUNCTION pgstage.copy_column('id', '_pgstage_new_id');
UPDATE "Shop Data"."Order ""Lines""" SET "_pgstage_new_id" = "id"
WHERE ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid AND "_pgstage_new_id" IS DISTINCT FROM "id";
ALTER TABLE "Shop Data"."Order ""Lines""" ADD CONSTRAINT "_pgstage_not_null__pgstage_new_id" CHECK ("_pgstage_new_id" IS NOT NULL) NOT VALID;
ALTER TABLE "Shop Data"."Order ""Lines""" VALIDATE CONSTRAINT "_pgstage_not_null__pgstage_new_id";
ALTER TABLE "Shop Data"."Order ""Lines""" ALTER COLUMN "_pgstage_new_id" SET NOT NULL;
DROP TRIGGER IF EXISTS "_pgstage_copy_id" ON "Shop Data"."Order ""Lines"""; ALTER TABLE "Shop Data"."Order ""Lines""" DROP COLUMN "id"; ALTER TABLE "Shop Data"."Order ""Lines""" RENAME COLUMN "_pgstage_new_id" TO "id"; ALTER TABLE "Shop Data"."Order ""Lines""" DROP CONSTRAINT IF EXISTS "_pgstage_not_null__pgstage_new_id";
-- rollback
