"""Which files a run reads ({date} from the partition, globs and zip members in a stable order), and their fingerprints.

A plain file's SHA-256 is computed when first needed, or ahead of time in a thread (digest.py).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from pgstage.errors import SourceError, UsageError
from pgstage.pipeline.extract.compression import member_fingerprint, sniff, zip_members
from pgstage.pipeline.extract.digest import Digest


@dataclass(frozen=True)
class SourceFile:
    """One file of a run; `sha256` and `size` fingerprint its bytes as stored (compressed or not).

    A zip archive contributes one SourceFile per member, named `archive.zip!member.csv`, so
    each member has its own fingerprint, record numbers and checkpoints.
    """

    path: Path
    size: int
    digest: Digest
    member: str | None = None

    @property
    def name(self) -> str:
        return f"{self.path}!{self.member}" if self.member is not None else str(self.path)

    @property
    def sha256(self) -> str:
        """The SHA-256 of the stored bytes: computed here, or waited for if a thread is computing it."""
        return self.digest.value()


def resolve_files(pattern: str, base_dir: Path, partition: date | None, *,
                  allow_missing: bool = False) -> list[SourceFile]:
    """Expand `{date}` and globs relative to base_dir, then zip archives into their members.

    Nothing matching is an error, unless `allow_missing`: then the list is empty and the run
    is skipped (a partner who sends no file on a holiday).
    """
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
    if not paths and not allow_missing:
        day = f" for partition {partition.isoformat()}" if partition else ""
        raise SourceError(f"no source file matches {full}{day}",
                          hint="check source.path (relative paths start at the spec's directory) and --partition;"
                               " if a missing file is normal, set source.allow_missing = true to skip the run")
    files: list[SourceFile] = []
    for path in paths:
        if sniff(path) == "zip":
            for info in zip_members(path):
                size, sha256 = member_fingerprint(path, info)
                files.append(SourceFile(path=path, size=size, digest=Digest.known(sha256), member=info.filename))
        else:
            files.append(fingerprint(path))
    return files


def fingerprint(path: Path) -> SourceFile:
    """The file with its digest still to compute: a file changed under the same name is a new file."""
    digest = Digest.of(path)
    assert digest.stamp is not None
    return SourceFile(path=path, size=digest.stamp[2], digest=digest)
