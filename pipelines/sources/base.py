"""What every source provides: a plan of independent read tasks, and a reader for one task."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

from pipelines.records import ImageRecord, Rejected

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"})


@dataclass(frozen=True)
class ReadTask:
    """One unit of reading work: a shard file (WebDataset, Parquet) or one image file."""

    url: str
    root: str = ""  # folder sources: the tree root, so the label is the path below it


class Source(Protocol):
    name: str

    def plan(self, pattern: str | list[str]) -> list[ReadTask]:
        """Expand the user's URL pattern(s) into read tasks (runs once, on the launcher)."""

    def read(self, task: ReadTask) -> Iterator[ImageRecord | Rejected]:
        """Yield every image of the task; what cannot be read is yielded as Rejected."""
