SELECT key, row, rh
FROM (SELECT …) x
WHERE kh & 4095 = ANY(%(ranges)s::bigint[])
