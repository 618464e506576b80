"""Compressed sources, recognised by their first bytes (never by their name) and streamed.

gzip, bz2 and zstd wrap one stream; a zip archive holds members, and each member is a file
of its own in a run. Nothing is unpacked to disk or read whole into memory: every opener
returns a file object that decompresses as it is read.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Literal

from pgstage.errors import Location, MissingDependency, SourceError

Compression = Literal["plain", "gzip", "bz2", "zstd", "zip"]

GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = b"BZh"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")   # a member's local header; an empty archive's end record
_LOCAL_HEADER = struct.Struct("<4s22xHH")       # signature, ..., name length, extra length
_HASH_CHUNK = 1 << 20
_JUNK_PREFIXES = ("__MACOSX/",)                 # Finder's resource forks, never data


def _read_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, zipfile.BadZipFile)
    try:
        import zstandard
    except ImportError:
        return errors
    return (*errors, zstandard.ZstdError)


# What a damaged compressed stream raises while it is read (truncation, bad CRC, corrupt frames).
READ_ERRORS = _read_errors()


def sniff(path: Path) -> Compression:
    """The container a file's first bytes announce."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror}", location=Location(file=str(path))) from None
    if magic.startswith(GZIP_MAGIC):
        return "gzip"
    if magic.startswith(BZIP2_MAGIC) and b"1" <= magic[3:4] <= b"9":
        return "bz2"   # "BZh" and the block size digit: a CSV header may well start with "BZh"
    if magic == ZSTD_MAGIC:
        return "zstd"
    if magic in ZIP_MAGICS:
        return "zip"
    return "plain"


def zip_members(path: Path) -> list[zipfile.ZipInfo]:
    """The archive's files in name order (directories and macOS metadata left out)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(f"{path}: not a readable zip archive: {exc}", location=Location(file=str(path)),
                          hint="the archive looks truncated or corrupt; fetch it again") from None
    members = [i for i in infos if not i.is_dir() and not i.filename.startswith(_JUNK_PREFIXES)]
    if not members:
        raise SourceError(f"{path}: the zip archive holds no files", location=Location(file=str(path)),
                          hint="an empty archive usually means the export failed upstream; check the source")
    return sorted(members, key=lambda i: i.filename)


def member_fingerprint(path: Path, info: zipfile.ZipInfo) -> tuple[int, str]:
    """Size and SHA-256 of a member's bytes as stored in the archive (compressed), without inflating them.

    Like a whole .gz file, a member counts as changed when its stored bytes change.
    """
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            handle.seek(info.header_offset)
            signature, name_len, extra_len = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
            if signature != ZIP_MAGICS[0]:
                raise SourceError(f"{path}!{info.filename}: bad local header in the zip archive",
                                  hint="the archive looks corrupt; fetch it again")
            handle.seek(name_len + extra_len, 1)
            remaining = info.compress_size
            while remaining > 0:
                chunk = handle.read(min(remaining, _HASH_CHUNK))
                if not chunk:
                    raise SourceError(f"{path}!{info.filename}: the zip archive is truncated",
                                      hint="fetch the archive again")
                digest.update(chunk)
                remaining -= len(chunk)
    except (OSError, struct.error) as exc:
        raise SourceError(f"{path}!{info.filename}: cannot read the member: {exc}") from None
    return info.compress_size, digest.hexdigest()


def open_decompressed(path: Path, member: str | None = None) -> BinaryIO:
    """A stream of the file's (or zip member's) decompressed bytes."""
    kind = sniff(path)
    if member is not None:
        return _open_member(path, member)
    if kind == "zip":
        raise SourceError(f"{path} is a zip archive; its members are loaded one by one",
                          hint="this is a bug if it came from `pgstage run`: members are listed by resolve_files")
    handle = path.open("rb")
    if kind == "gzip":
        return gzip.GzipFile(fileobj=handle, mode="rb")  # type: ignore[return-value]
    if kind == "bz2":
        return bz2.BZ2File(handle, mode="rb")  # type: ignore[return-value]
    if kind == "zstd":
        return _zstd_reader(handle)
    return handle


def is_plain(stream: BinaryIO) -> bool:
    """True for a raw file, where a seek is a real seek (compressed streams can only read forward)."""
    return isinstance(stream, io.BufferedReader)


def _open_member(path: Path, member: str) -> BinaryIO:
    try:
        with zipfile.ZipFile(path) as archive:  # the member keeps the file open after the archive closes
            return archive.open(member)  # type: ignore[return-value]
    except KeyError:
        raise SourceError(f"{path}!{member}: no such member in the archive",
                          hint="the archive changed while the run read it; run again") from None
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError) as exc:
        # RuntimeError: encrypted member; NotImplementedError: a compression method zipfile lacks (deflate64)
        raise SourceError(f"{path}!{member}: cannot open the member: {exc}",
                          hint="pgstage reads unencrypted zip members that are stored, deflated, bzip2- or"
                               " lzma-compressed") from None


def _zstd_reader(handle: BinaryIO) -> BinaryIO:
    try:
        import zstandard
    except ImportError:
        handle.close()
        raise MissingDependency("this file is zstd-compressed and the zstandard package is not installed",
                                hint='pip install "pgstage" (zstandard is one of its dependencies)'
                                     " or pip install zstandard") from None
    return _ZstdStream(handle, zstandard.ZstdDecompressor())  # type: ignore[return-value]


class _ZstdStream(io.RawIOBase):
    """zstd frames, one after another (pzstd and `cat` write several), decompressed as they are read.

    zstandard's own stream_reader returns a short read for a truncated frame without a word:
    here, input that ends inside a frame raises EOFError, as gzip and bz2 do.
    """

    _CHUNK = 256 << 10

    def __init__(self, raw: BinaryIO, decompressor: Any) -> None:
        super().__init__()
        self._raw = raw
        self._decompressor = decompressor
        self._frame = decompressor.decompressobj()
        self._inside_frame = False
        self._out = bytearray()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._out:
            data = self._raw.read(self._CHUNK)
            if not data:
                if self._inside_frame:
                    raise EOFError("the zstd stream ended inside a frame")
                return 0
            while data:
                if self._frame.eof:
                    self._frame = self._decompressor.decompressobj()
                self._out += self._frame.decompress(data)
                self._inside_frame = not self._frame.eof
                data = self._frame.unused_data if self._frame.eof else b""
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        del self._out[:n]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()
