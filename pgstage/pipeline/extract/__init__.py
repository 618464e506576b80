"""Extract: find the source files of a run and stream their bytes, never a row at a time.

Each name is imported from its module when first asked for (`__getattr__`): a run whose files
were all loaded before resolves and fingerprints them (files.py) and reads none of them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgstage.pipeline.extract import postgres
    from pgstage.pipeline.extract.csv import CsvReader, Header, Window
    from pgstage.pipeline.extract.files import SourceFile, resolve_files
    from pgstage.pipeline.extract.jsonl import JsonlReader
    from pgstage.pipeline.extract.parquet import ParquetReader

_HOMES = {"SourceFile": "files", "resolve_files": "files", "CsvReader": "csv", "Header": "csv", "Window": "csv",
          "JsonlReader": "jsonl", "ParquetReader": "parquet", "postgres": None}

__all__ = ["CsvReader", "Header", "JsonlReader", "ParquetReader", "SourceFile", "Window", "postgres", "resolve_files"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    home = _HOMES[name]
    if home is None:   # a module of the package
        return import_module(f"{__name__}.{name}")
    return getattr(import_module(f"{__name__}.{home}"), name)
