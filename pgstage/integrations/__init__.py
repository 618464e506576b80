"""Thin optional adapters to orchestrators and transform tools; each imports pgstage's public API only."""
