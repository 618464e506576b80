WITH c AS (DELETE
FROM "pgstage"."_chk_7_0_0"
WHERE _reasons IS NOT NULL
RETURNING _rec, _reasons, _rejected_raw)
INSERT INTO pgstage.rejects (run_id, file, batch_no, record, raw, reasons)
SELECT 7, 'orders0.csv', 0, c._rec, c._rejected_raw, to_jsonb(c._reasons)
FROM c
