"""Extract: find the source files of a run and stream their bytes, never a row at a time."""

from pgstage.pipeline.extract.files import SourceFile, resolve_files
from pgstage.pipeline.extract.csv import CsvReader, Header, Window
from pgstage.pipeline.extract.jsonl import JsonlReader
from pgstage.pipeline.extract.parquet import ParquetReader
from pgstage.pipeline.extract import postgres

__all__ = ["CsvReader", "Header", "JsonlReader", "ParquetReader", "SourceFile", "Window", "postgres", "resolve_files"]
