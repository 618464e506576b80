SELECT kh & 4095 AS r, count(*), bit_xor(rh)
FROM (SELECT …) x
WHERE 8 = 0 OR kh & 255 = ANY(%(parents)s::bigint[])
GROUP BY 1
