"""Which files a run reads ({date} from the partition, globs in a stable order), and their fingerprints."""

from __future__ import annotations

import glob
import gzip
import hashlib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import BinaryIO

from pgstage.errors import SourceError, UsageError

GZIP_MAGIC = b"\x1f\x8b"
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class SourceFile:
    """One file of a run; `sha256` and `size` fingerprint its bytes as stored (compressed or not)."""

    path: Path
    size: int
    sha256: str

    @property
    def name(self) -> str:
        return str(self.path)


def resolve_files(pattern: str, base_dir: Path, partition: date | None) -> list[SourceFile]:
    """Expand `{date}` and globs relative to base_dir; fail clearly when nothing matches."""
    if "{date}" in pattern:
        if partition is None:
            raise UsageError(f"source.path {pattern!r} contains {{date}}",
                             hint="pass --partition YYYY-MM-DD to say which day to load")
        pattern = pattern.replace("{date}", partition.isoformat())
    full = pattern if Path(pattern).is_absolute() else str(base_dir / pattern)
    if glob.has_magic(full):
        paths = sorted(Path(p) for p in glob.glob(full) if Path(p).is_file())
    else:
        paths = [Path(full)] if Path(full).is_file() else []
    if not paths:
        raise SourceError(f"no source file matches {full}",
                          hint="check source.path (relative paths start at the spec's directory) and --partition")
    return [fingerprint(p) for p in paths]


def fingerprint(path: Path) -> SourceFile:
    """Hash the stored bytes: a file changed under the same name is a new file."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror}") from None
    return SourceFile(path=path, size=path.stat().st_size, sha256=digest.hexdigest())


def open_bytes(path: Path) -> BinaryIO:
    """Open a file for streaming, decompressing gzip when its first bytes say so."""
    handle = path.open("rb")
    magic = handle.read(2)
    handle.seek(0)
    if magic == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=handle, mode="rb")  # type: ignore[return-value]
    return handle
