"""Parquet files with an image-bytes column (binary, or a Hugging Face ``{bytes, path}`` struct)."""
from __future__ import annotations

import posixpath
from typing import Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.records import ImageRecord, Rejected
from pipelines.sources.base import ReadTask
from pipelines.sources.urls import expand_urls


class ParquetSource:
    name = "parquet"

    def __init__(self, image_column: str = "image", label_column: str = "label",
                 key_column: str = "key", rows_per_batch: int = 256) -> None:
        self.image_column = image_column
        self.label_column = label_column
        self.key_column = key_column
        self.rows_per_batch = rows_per_batch

    def plan(self, pattern: str | list[str]) -> list[ReadTask]:
        return [ReadTask(url) for url in expand_urls(pattern) if url.endswith((".parquet", ".pq"))]

    def _image_bytes(self, column: pa.Array) -> list[bytes | None]:
        if pa.types.is_struct(column.type):
            column = column.field("bytes")
        return column.to_pylist()

    def read(self, task: ReadTask) -> Iterator[ImageRecord | Rejected]:
        stem = posixpath.basename(task.url).rsplit(".", 1)[0]
        try:
            with fsspec.open(task.url, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                names = parquet.schema_arrow.names
                if self.image_column not in names:
                    raise KeyError(f"image column {self.image_column!r} not in {names}")
                columns = [c for c in (self.image_column, self.label_column, self.key_column)
                           if c in names]
                row = 0
                for batch in parquet.iter_batches(batch_size=self.rows_per_batch, columns=columns):
                    images = self._image_bytes(batch.column(self.image_column))
                    labels = (batch.column(self.label_column).to_pylist()
                              if self.label_column in columns else [None] * len(images))
                    keys = (batch.column(self.key_column).to_pylist()
                            if self.key_column in columns else [None] * len(images))
                    for data, label, key in zip(images, labels, keys):
                        key = str(key) if key is not None else f"{stem}/{row}"
                        source = f"{task.url}#row={row}"
                        row += 1
                        yield ImageRecord(key, source, "" if label is None else str(label),
                                          data or b"")
        except (OSError, KeyError, pa.ArrowException) as error:
            yield Rejected.from_exception(task.url, task.url, "read", error)
