"""The SQL functions pgstage installs in its ledger schema, which the validation pass calls.

Kept apart from validate and transform so that the ledger, which installs them with its
tables, needs neither.
"""

from __future__ import annotations

from psycopg import sql

# Volatile, so the planner keeps each level a subquery; parallel safe, so workers may run it;
# a plain SQL body, so it is inlined to a constant and costs nothing per row.
FENCE = sql.SQL("CREATE OR REPLACE FUNCTION pgstage.fence() RETURNS integer"
                " LANGUAGE sql VOLATILE PARALLEL SAFE AS 'SELECT 1'")

# PARALLEL RESTRICTED: its EXCEPTION block opens a subtransaction, which a parallel worker
# may not ("cannot start subtransactions during a parallel operation"); the leader runs it.
TRY_TO_TIMESTAMP = sql.SQL("""
CREATE OR REPLACE FUNCTION pgstage.try_to_timestamp(value text, fmt text) RETURNS timestamptz
LANGUAGE plpgsql STABLE STRICT PARALLEL RESTRICTED AS $fn$
BEGIN
    RETURN to_timestamp(value, fmt);
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$fn$""")

INSTALL = (FENCE, TRY_TO_TIMESTAMP)
