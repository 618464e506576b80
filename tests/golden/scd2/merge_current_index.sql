CREATE UNIQUE INDEX "orders_current" ON "shop"."orders" ("id", "day")
WHERE _is_current
