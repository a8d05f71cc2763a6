"""WebDataset tar shards as img2dataset writes them: ``key.jpg`` beside ``key.cls|txt|json``."""
from __future__ import annotations

import json
import posixpath
import tarfile
from typing import Iterator

import fsspec

from pipelines.records import ImageRecord, Rejected
from pipelines.sources.base import IMAGE_EXTENSIONS, ReadTask
from pipelines.sources.urls import expand_urls

LABEL_EXTENSIONS = ("cls", "txt", "json")  # in order of preference


def split_member(name: str) -> tuple[str, str]:
    """``dir/000123.seg.png`` -> (``dir/000123``, ``seg.png``): the key ends at the first dot of
    the base name, as in the webdataset library."""
    directory, base = posixpath.split(name)
    stem, _, extension = base.partition(".")
    return posixpath.join(directory, stem) if directory else stem, extension.lower()


def _label(parts: dict[str, bytes]) -> str:
    for extension in LABEL_EXTENSIONS:
        if extension in parts:
            text = parts[extension].decode("utf-8", errors="replace").strip()
            if extension == "json":
                meta = json.loads(text or "{}")
                value = meta.get("label", meta.get("class", "")) if isinstance(meta, dict) else ""
                return "" if value is None else str(value)
            return text
    return ""


def _sample(url: str, key: str, parts: dict[str, bytes]) -> ImageRecord | Rejected:
    images = [ext for ext in parts if ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS]
    if not images:
        return Rejected(key, f"{url}#{key}", "read", "MissingImage",
                        f"sample has no image member (found: {sorted(parts)})")
    try:
        label = _label(parts)
    except (ValueError, UnicodeDecodeError) as error:
        return Rejected.from_exception(key, f"{url}#{key}", "read", error)
    image_ext = sorted(images)[0]
    return ImageRecord(key=key, source=f"{url}#{key}.{image_ext}", label=label, data=parts[image_ext])


class WebDatasetSource:
    name = "webdataset"

    def plan(self, pattern: str | list[str]) -> list[ReadTask]:
        return [ReadTask(url) for url in expand_urls(pattern)]

    def read(self, task: ReadTask) -> Iterator[ImageRecord | Rejected]:
        current_key, parts = None, {}
        try:
            with fsspec.open(task.url, "rb", compression="infer") as stream:
                with tarfile.open(fileobj=stream, mode="r|*") as tar:
                    for member in tar:
                        if not member.isfile():
                            continue
                        key, extension = split_member(member.name)
                        if key.startswith("__") or not extension:
                            continue  # tar metadata such as __index__
                        if key != current_key and current_key is not None:
                            yield _sample(task.url, current_key, parts)
                            parts = {}
                        current_key = key
                        handle = tar.extractfile(member)
                        parts[extension] = handle.read() if handle else b""
        except (tarfile.TarError, OSError, EOFError) as error:
            # The rest of a broken shard is unreadable: say so once, keep what was read.
            yield Rejected.from_exception(f"{task.url}@{current_key or 'start'}", task.url,
                                          "read", error)
            return
        if current_key is not None:
            yield _sample(task.url, current_key, parts)
