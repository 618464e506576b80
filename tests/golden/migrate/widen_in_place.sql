ALTER TABLE "Shop Data"."Order ""Lines""" ALTER COLUMN "status" TYPE text;
-- rollback;
ALTER TABLE "Shop Data"."Order ""Lines""" ALTER COLUMN "status" TYPE character varying(5)
