DELETE
FROM "shop"."orders" t
WHERE ("t"."day" >= '2024-01-01'::date AND "t"."day" < '2024-02-01'::date)
