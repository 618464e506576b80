INSERT INTO pgstage.alerts (run_id, pipeline, partition, event, target, status, attempts, error, payload) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
