"""The steps of a load (SPEC §4), one module each: extract → stage → validate + transform → merge → ledger.

The order is not declared here but lived once, by `pgstage/run/`, whose phases call the
steps in that order (a tuple of modules here drove nothing and drifted from the code).
validate and transform run as one SQL pass: transform supplies the expressions, validate
evaluates them once per row together with the rules.
"""
