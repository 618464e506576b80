"""Optional peers run: `python -m benchmarks.peers --help`.

Times the tools a pgstage user would otherwise reach for (dlt, Sling, pandas, pgloader, plain
psycopg) on the same generated files, on the same server and in the same run as pgstage and
its baselines, so every peer number is read next to a ratio measured minutes apart. The
peers' packages are the `peers` extra, never pgstage dependencies.
"""
