"""`python -m pgstage.cli`: the same as the `pgstage` console script."""

from pgstage.cli import console

console()
