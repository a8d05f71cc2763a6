"""Readers of image shards on any fsspec URL: WebDataset tars, Parquet files, image folders."""
from __future__ import annotations

from pipelines.sources.base import ReadTask, Source
from pipelines.sources.folder import FolderSource
from pipelines.sources.parquet import ParquetSource
from pipelines.sources.urls import expand_braces, expand_urls
from pipelines.sources.webdataset import WebDatasetSource

SOURCE_FORMATS = ("webdataset", "parquet", "folder")


def detect_format(pattern: str) -> str:
    """Guess the source format from the pattern's file extension; folders otherwise."""
    tail = pattern.rstrip("/").rsplit("/", 1)[-1].lower()
    if any(tail.endswith(ext) for ext in (".tar", ".tar.gz", ".tgz", ".tar}", ".tar*")):
        return "webdataset"
    if ".parquet" in tail or tail.endswith(".pq"):
        return "parquet"
    return "folder"


def make_source(source_format: str, image_column: str = "image",
                label_column: str = "label", key_column: str = "key") -> Source:
    if source_format == "webdataset":
        return WebDatasetSource()
    if source_format == "parquet":
        return ParquetSource(image_column, label_column, key_column)
    if source_format == "folder":
        return FolderSource()
    raise ValueError(f"unknown source format {source_format!r}; expected one of {SOURCE_FORMATS}")


__all__ = ["ReadTask", "Source", "SOURCE_FORMATS", "detect_format", "make_source",
           "expand_urls", "expand_braces"]
