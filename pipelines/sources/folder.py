"""Image-folder trees (``root/<label>/<name>.jpg``), as torchvision's ImageFolder reads them."""
from __future__ import annotations

import posixpath
from typing import Iterator

import fsspec

from pipelines.records import ImageRecord, Rejected
from pipelines.sources.base import IMAGE_EXTENSIONS, ReadTask
from pipelines.sources.urls import expand_urls, literal_exists


def _root_of(pattern: str) -> str:
    """The part of a pattern before its first wildcard or brace: labels are paths below it.
    A path that exists is literal (``photos [2024]``): it is its own root."""
    if literal_exists(pattern):
        return pattern.rstrip("/")
    # the longest leading part that exists literally (``photos [2024]`` of
    # ``photos [2024]/*/*.png``), never shorter than the URL's scheme and bucket
    scheme = pattern.index("://") + 3 if "://" in pattern else 0
    parts = pattern.rstrip("/").split("/")
    for n in range(len(parts) - 1, 0, -1):
        prefix = "/".join(parts[:n])
        if len(prefix) > scheme and any(c in prefix for c in "*?[{") and literal_exists(prefix):
            return prefix
    cut = min((pattern.find(c) for c in "*?[{" if c in pattern), default=len(pattern))
    return pattern[:cut].rstrip("/") if cut < len(pattern) else pattern.rstrip("/")


def _is_image_name(url: str) -> bool:
    name = posixpath.basename(url)
    return "." in name and name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS


class FolderSource:
    name = "folder"

    def plan(self, pattern: str | list[str]) -> list[ReadTask]:
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        tasks = []
        for one in patterns:
            root = _root_of(one)
            # Every file is a task: one passed over by extension is read as a Rejected
            # (SkippedByExtension), so read = embedded + rejected covers every file.
            tasks += [ReadTask(url, root) for url in expand_urls(one)]
        if not any(_is_image_name(task.url) for task in tasks):
            raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                                    f"under {pattern!r}")
        return tasks

    def read(self, task: ReadTask) -> Iterator[ImageRecord | Rejected]:
        root_path = fsspec.core.url_to_fs(task.root)[1] if task.root else ""
        path = fsspec.core.url_to_fs(task.url)[1]
        relative = posixpath.relpath(path, root_path) if root_path else posixpath.basename(path)
        directory = posixpath.dirname(relative)
        label = posixpath.basename(directory) if directory else None  # unlabelled
        if not _is_image_name(path):
            yield Rejected(relative, task.url, "read", "SkippedByExtension",
                           f"not an image file name (extensions: "
                           f"{', '.join(sorted(IMAGE_EXTENSIONS))}): passed over, not opened")
            return
        try:
            with fsspec.open(task.url, "rb") as handle:
                data = handle.read()
        except OSError as error:
            yield Rejected.from_exception(relative, task.url, "read", error)
            return
        yield ImageRecord(key=relative, source=task.url, label=label, data=data)
