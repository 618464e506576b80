"""Thin optional adapters to orchestrators; each imports pgstage's public API only."""
