ALTER TABLE "Shop Data"."Order ""Lines""" RENAME COLUMN "mail" TO "email";
-- rollback;
ALTER TABLE "Shop Data"."Order ""Lines""" RENAME COLUMN "email" TO "mail"
