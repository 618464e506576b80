"""pgstage benchmark suite: `python -m benchmarks --help`."""
