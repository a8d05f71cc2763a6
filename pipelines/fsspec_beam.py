"""Beam FileSystem adapter over fsspec, so Beam's own sinks (temp files, then finalize) write
to any fsspec URL Beam has no native filesystem for (``memory://``, ``file://``, ``az://``...).

Beam's native filesystems (local paths, ``gs://``, ``s3://``, ``hdfs://``) are left to Beam.
"""
from __future__ import annotations

import posixpath
from typing import BinaryIO, Iterator

import fsspec
from apache_beam.io.filesystem import (
    BeamIOError,
    CompressedFile,
    CompressionTypes,
    FileMetadata,
    FileSystem,
)

_REGISTERED: dict[str, type] = {}
DEFAULT_SCHEMES = ("memory", "file")


class FsspecFileSystem(FileSystem):
    """Implements Beam's FileSystem for one fsspec protocol (set per subclass)."""

    PROTOCOL: str = ""

    @classmethod
    def scheme(cls) -> str:
        # The abstract base must not answer None: that is how Beam's LocalFileSystem claims
        # scheme-less paths, and two matches make Beam refuse the path.
        return cls.PROTOCOL or "fsspec-abstract-base"

    @property
    def _fs(self) -> fsspec.AbstractFileSystem:
        return fsspec.filesystem(self.PROTOCOL)

    def _url(self, path: str) -> str:
        return f"{self.PROTOCOL}://{path.lstrip('/')}" if self.PROTOCOL != "file" else f"file://{path}"

    def _path(self, url: str) -> str:
        return self._fs._strip_protocol(url)

    def join(self, basepath: str, *paths: str) -> str:
        return posixpath.join(basepath, *paths)

    def split(self, path: str) -> tuple[str, str]:
        prefix = f"{self.PROTOCOL}://"
        head, tail = posixpath.split(path[len(prefix):] if path.startswith(prefix) else path)
        return prefix + head, tail

    def mkdirs(self, path: str) -> None:
        self._fs.makedirs(self._path(path), exist_ok=True)

    def has_dirs(self) -> bool:
        return True

    def _list(self, dir_or_prefix: str) -> Iterator[FileMetadata]:
        path = self._path(dir_or_prefix)
        if not self._fs.exists(path):
            return
        try:
            found = self._fs.find(path, detail=True) if self._fs.isdir(path) else {
                path: self._fs.info(path)}
        except OSError as error:
            raise BeamIOError("List operation failed", {dir_or_prefix: error}) from error
        for name, info in found.items():
            yield FileMetadata(self._url(name), int(info.get("size") or 0), _mtime(info))

    def _open(self, path: str, mode: str, compression_type: str) -> BinaryIO:
        compression_type = FileSystem._get_compression_type(path, compression_type)
        if "w" in mode:
            self._fs.makedirs(posixpath.dirname(self._path(path)), exist_ok=True)
        raw = self._fs.open(self._path(path), mode)
        if compression_type == CompressionTypes.UNCOMPRESSED:
            return raw
        return CompressedFile(raw, compression_type=compression_type)

    def create(self, path, mime_type="application/octet-stream",
               compression_type=CompressionTypes.AUTO) -> BinaryIO:
        return self._open(path, "wb", compression_type)

    def open(self, path, mime_type="application/octet-stream",
             compression_type=CompressionTypes.AUTO) -> BinaryIO:
        return self._open(path, "rb", compression_type)

    def copy(self, source_file_names: list[str], destination_file_names: list[str]) -> None:
        self._pairwise("Copy", source_file_names, destination_file_names, self._fs.copy)

    def rename(self, source_file_names: list[str], destination_file_names: list[str]) -> None:
        self._pairwise("Rename", source_file_names, destination_file_names, self._fs.mv)

    def _pairwise(self, what: str, sources: list[str], destinations: list[str], operation) -> None:
        if len(sources) != len(destinations):
            raise BeamIOError(f"{what}: source and destination lists differ in length")
        failures = {}
        for source, destination in zip(sources, destinations):
            try:
                self._fs.makedirs(posixpath.dirname(self._path(destination)), exist_ok=True)
                operation(self._path(source), self._path(destination), recursive=True)
            except OSError as error:
                failures[(source, destination)] = error
        if failures:
            raise BeamIOError(f"{what} operation failed", failures)

    def exists(self, path: str) -> bool:
        return self._fs.exists(self._path(path))

    def size(self, path: str) -> int:
        return int(self._fs.size(self._path(path)))

    def last_updated(self, path: str) -> float:
        return _mtime(self._fs.info(self._path(path)))

    def checksum(self, path: str) -> str:
        return str(self.size(path))

    def metadata(self, path: str) -> FileMetadata:
        if not self.exists(path):
            raise BeamIOError(f"Path does not exist: {path}")
        info = self._fs.info(self._path(path))
        return FileMetadata(path, int(info.get("size") or 0), _mtime(info))

    def delete(self, paths: list[str]) -> None:
        failures = {}
        for path in paths:
            try:
                self._fs.rm(self._path(path), recursive=True)
            except (OSError, FileNotFoundError) as error:
                failures[path] = error
        if failures:
            raise BeamIOError("Delete operation failed", failures)


def _mtime(info: dict) -> float:
    for field in ("mtime", "created", "LastModified"):
        value = info.get(field)
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
    return 0.0


def register_fsspec_scheme(protocol: str) -> type:
    """Make Beam's FileSystems resolve ``protocol://`` URLs through fsspec (idempotent)."""
    if protocol not in _REGISTERED:
        _REGISTERED[protocol] = type(
            f"Fsspec{protocol.capitalize()}FileSystem", (FsspecFileSystem,), {"PROTOCOL": protocol}
        )
    return _REGISTERED[protocol]


for _protocol in DEFAULT_SCHEMES:
    register_fsspec_scheme(_protocol)
