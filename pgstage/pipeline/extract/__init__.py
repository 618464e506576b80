"""Extract: find the source files of a run and stream their bytes, never a row at a time."""

from pgstage.pipeline.extract.files import SourceFile, resolve_files
from pgstage.pipeline.extract.csv import CsvReader, Header

__all__ = ["CsvReader", "Header", "SourceFile", "resolve_files"]
