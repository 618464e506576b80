SELECT coalesce(max(alert_id) FILTER (WHERE event = ANY(%(trouble)s)), 0) > coalesce(max(alert_id) FILTER (WHERE event = 'recovered'), 0)
FROM pgstage.alerts
WHERE pipeline = %(pipeline)s
