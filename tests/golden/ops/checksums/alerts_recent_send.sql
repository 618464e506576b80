SELECT EXISTS (SELECT 1
FROM pgstage.alerts
WHERE pipeline = %(pipeline)s AND event = %(event)s AND target = %(target)s AND status = 'sent' AND created_at > clock_timestamp() - make_interval(secs => %(window)s))
