"""The steps of a load, in order (SPEC §4). `run.py` drives them; each module is one step.

validate and transform run as one SQL pass: transform supplies the expressions, validate
evaluates them once per row together with the rules.
"""

from pgstage.pipeline import extract, ledger, merge, stage, transform, validate

STEPS = (extract, stage, validate, transform, merge, ledger)

__all__ = ["STEPS"]
