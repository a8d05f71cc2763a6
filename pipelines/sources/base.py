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


# --- labels (issue 12, kind 3) -------------------------------------------------------------

LABEL_KINDS = ("cls", "json", "txt", "folder", "column")
# Per-format defaults: never a caption (.txt), which img2dataset writes beside every image.
DEFAULT_LABEL_FROM = {"webdataset": "cls;json:label", "parquet": "column:label", "folder": "folder"}
UNLABELLED_POLICIES = ("keep", "reject")


def parse_label_from(spec: str) -> list[tuple[str, str]]:
    """``"cls;json:label"`` -> ``[("cls", ""), ("json", "label")]``: an ordered list of label
    origins (the first one present in an item wins). Kinds: ``cls``, ``txt`` (WebDataset
    fields), ``json:<key>`` (a key of the sample's ``.json``), ``folder`` (the parent folder),
    ``column:<name>`` (a Parquet column). Raises ValueError for an unknown kind or a missing
    ``<key>``/``<name>``."""
    out: list[tuple[str, str]] = []
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        kind, _, argument = part.partition(":")
        kind = kind.strip().lower()
        if kind not in LABEL_KINDS:
            raise ValueError(f"--label-from {spec!r}: unknown kind {kind!r}; expected "
                             "cls|txt|json:<key>|folder|column:<name>")
        if kind in ("json", "column") and not argument:
            raise ValueError(f"--label-from {spec!r}: {kind} needs a name ({kind}:<name>)")
        if kind not in ("json", "column") and argument:
            raise ValueError(f"--label-from {spec!r}: {kind} takes no argument")
        out.append((kind, argument))
    if not out:
        raise ValueError(f"--label-from {spec!r}: empty")
    return out


def check_label_kinds(origins: list[tuple[str, str]], allowed: tuple[str, ...], fmt: str) -> None:
    """Raise ValueError if an origin's kind cannot apply to source format ``fmt``."""
    bad = [kind for kind, _ in origins if kind not in allowed]
    if bad:
        raise ValueError(f"--label-from kind(s) {bad} do not apply to {fmt} sources "
                         f"(allowed: {', '.join(allowed)})")


def normalize_label(value: object) -> str | None:
    """A label value from any origin as the class string, or None (unlabelled).

    None, NaN and empty/blank strings are None (never a class named ``''``); integers and
    integral floats are written as integers (``3``, ``3.0``, ``b"3\\n"`` -> ``"3"``), so a
    pandas float64 column with missing values gives the same class as a ``.cls`` of ``3``;
    bytes are UTF-8 text; other values are ``str(value).strip()``."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value).strip()
    return text or None
