"""Parquet files with an image-bytes column (binary, or a Hugging Face ``{bytes, path}`` struct).

A ``{bytes, path}`` struct with null bytes is read from its path, as the ``datasets`` library's
``Image`` feature does: a relative path from the Parquet file's folder (through fsspec), an
absolute one only when it lies under that folder or under one of ``path_roots``
(``pipelines.sources.policy``); anything else is rejected with ``SourceRefused``."""
from __future__ import annotations

import posixpath
from typing import Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.records import ImageRecord, Rejected, Skipped
from pipelines.sources.base import (DEFAULT_LABEL_FROM, ReadTask, check_label_kinds,
                                    normalize_label, parse_label_from)
from pipelines.sources.policy import SourcePolicy, SourceRefused
from pipelines.sources.urls import expand_urls


class ParquetSource:
    """Parquet rows. ``label_from``: ``column:<name>`` origins (``;``-separated, first non-null
    wins); None means ``column:<label_column>``. ``path_roots``: extra folders/URL prefixes a
    path-only image struct may point into (besides the Parquet file's own folder). Raises
    ValueError for a bad ``label_from`` or root."""

    name = "parquet"

    def __init__(self, image_column: str = "image", label_column: str = "label",
                 key_column: str = "key", rows_per_batch: int = 256,
                 label_from: str | None = None, path_roots: tuple[str, ...] = (),
                 list_skipped: bool = False) -> None:
        """``list_skipped``: also yield one ``Skipped`` per file for each column that is not
        the image, a label or the key column."""
        self.list_skipped = list_skipped
        self.image_column = image_column
        self.label_column = label_column
        self.key_column = key_column
        self.rows_per_batch = rows_per_batch
        origins = parse_label_from(label_from or f"column:{label_column}")
        check_label_kinds(origins, ("column",), "parquet")
        self.label_columns = [name for _, name in origins]
        self.path_roots = tuple(path_roots)
        SourcePolicy(self.path_roots, resolver=None)  # validate the roots now

    def plan(self, pattern: str | list[str]) -> list[ReadTask]:
        return [ReadTask(url) for url in expand_urls(pattern) if url.endswith((".parquet", ".pq"))]

    def _image_bytes(self, column: pa.Array) -> tuple[list[bytes | None], list[str | None]]:
        """(bytes, path) per row; paths are None unless the column is a ``{bytes, path}`` struct."""
        if pa.types.is_struct(column.type):
            names = [column.type.field(i).name for i in range(column.type.num_fields)]
            paths = column.field("path").to_pylist() if "path" in names else [None] * len(column)
            return column.field("bytes").to_pylist(), paths
        return column.to_pylist(), [None] * len(column)

    def _resolve_path(self, parquet_url: str, path: str) -> str:
        """A struct's ``path`` as a URL to open: relative to the Parquet file's folder, or an
        absolute path/URL under that folder or ``path_roots``. Raises SourceRefused."""
        folder = parquet_url.rsplit("/", 1)[0] if "/" in parquet_url else "."
        if "://" not in folder and not folder.startswith("/"):
            folder = posixpath.abspath(folder)
        if "://" in path or path.startswith("/"):
            target = path
        else:
            target = f"{folder}/{path}"
        policy = SourcePolicy((folder,) + self.path_roots, resolver=None)
        policy.check_url(target)  # refuses '..', other hosts, paths outside the roots
        return target

    def _read_path(self, parquet_url: str, path: str) -> tuple[str, bytes]:
        """(url, bytes) of a path-only image struct. Raises SourceRefused or OSError."""
        url = self._resolve_path(parquet_url, path)
        with fsspec.open(url, "rb") as handle:
            return url, handle.read()

    def read(self, task: ReadTask) -> Iterator[ImageRecord | Rejected | Skipped]:
        stem = posixpath.basename(task.url).rsplit(".", 1)[0]
        try:
            with fsspec.open(task.url, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                names = parquet.schema_arrow.names
                if self.image_column not in names:
                    raise KeyError(f"image column {self.image_column!r} not in {names}")
                columns = [c for c in (self.image_column, *self.label_columns, self.key_column)
                           if c in names]
                if self.list_skipped:
                    rows = parquet.metadata.num_rows
                    for name in (n for n in names if n not in columns):
                        yield Skipped(stem, f"{task.url}#column={name}",
                                      f"column {name!r} ({rows} rows) not used: not the image "
                                      f"({self.image_column!r}), a label ({self.label_columns}) "
                                      f"or the key ({self.key_column!r})")
                row = 0
                for batch in parquet.iter_batches(batch_size=self.rows_per_batch, columns=columns):
                    images, paths = self._image_bytes(batch.column(self.image_column))
                    label_lists = [batch.column(c).to_pylist() for c in self.label_columns
                                   if c in columns]
                    labels = [next((lb for lb in map(normalize_label, values) if lb is not None),
                                   None) for values in zip(*label_lists)] if label_lists \
                        else [None] * len(images)
                    keys = (batch.column(self.key_column).to_pylist()
                            if self.key_column in columns else [None] * len(images))
                    for data, path, label, key in zip(images, paths, labels, keys):
                        key = str(key) if key is not None else f"{stem}/{row}"
                        source = f"{task.url}#row={row}"
                        row += 1
                        if data is None and path:
                            try:
                                source, data = self._read_path(task.url, path)
                            except (SourceRefused, OSError) as error:
                                yield Rejected(key, source, "read", type(error).__name__,
                                               f"image struct has no bytes, only path {path!r}: "
                                               f"{error}"[:2000])
                                continue
                        yield ImageRecord(key, source, label, data or b"")
        except (OSError, KeyError, pa.ArrowException) as error:
            yield Rejected.from_exception(task.url, task.url, "read", error)
