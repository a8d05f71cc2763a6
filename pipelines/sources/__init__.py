"""Readers of image shards on any fsspec URL: WebDataset tars, Parquet files, image folders."""
from __future__ import annotations

from pipelines.sources.base import (DEFAULT_LABEL_FROM, ReadTask, Source, check_label_kinds,
                                    parse_label_from)
from pipelines.sources.folder import FolderSource
from pipelines.sources.parquet import ParquetSource
from pipelines.sources.urls import expand_braces, expand_urls
from pipelines.sources.webdataset import DEFAULT_IMAGE_FIELDS, WebDatasetSource
from pipelines.storage import bound_http_reads

SOURCE_FORMATS = ("webdataset", "parquet", "folder")

bound_http_reads()  # every reader here may list or read an http(s) URL: never wait forever


def detect_format(pattern: str) -> str:
    """Guess the source format from the pattern's file extension; folders otherwise."""
    tail = pattern.rstrip("/").rsplit("/", 1)[-1].lower()
    if any(tail.endswith(ext) for ext in (".tar", ".tar.gz", ".tgz", ".tar}", ".tar*")):
        return "webdataset"
    if ".parquet" in tail or tail.endswith(".pq"):
        return "parquet"
    return "folder"


def make_source(source_format: str, image_column: str = "image",
                label_column: str = "label", key_column: str = "key",
                image_field: str = DEFAULT_IMAGE_FIELDS, label_from: str = "",
                path_roots: tuple[str, ...] = (), list_skipped: bool = False) -> Source:
    """The reader for ``source_format``. ``image_field``: WebDataset image-field preference;
    ``label_from``: label origins (``base.parse_label_from``; ``""``: the format's default in
    ``DEFAULT_LABEL_FROM``); ``path_roots``: Parquet path-only image structs may also point
    under these; ``list_skipped``: WebDataset and Parquet readers also yield a ``Skipped`` for
    each member / column they pass over (folder readers always reject skipped files). Raises
    ValueError for an unknown format or an option that does not apply."""
    if source_format == "webdataset":
        return WebDatasetSource(image_field, label_from or DEFAULT_LABEL_FROM["webdataset"],
                                list_skipped=list_skipped)
    if source_format == "parquet":
        return ParquetSource(image_column, label_column, key_column,
                             label_from=label_from or None, path_roots=tuple(path_roots),
                             list_skipped=list_skipped)
    if source_format == "folder":
        if label_from:
            check_label_kinds(parse_label_from(label_from), ("folder",), "folder")
        return FolderSource()
    raise ValueError(f"unknown source format {source_format!r}; expected one of {SOURCE_FORMATS}")


__all__ = ["ReadTask", "Source", "SOURCE_FORMATS", "detect_format", "make_source",
           "expand_urls", "expand_braces"]
