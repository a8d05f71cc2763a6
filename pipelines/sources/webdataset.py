"""WebDataset tar shards as img2dataset writes them: ``key.jpg`` beside ``key.cls|txt|json``.

A sample is every member sharing the basename up to its first dot; the rest is the field
(``scene01.png`` + ``scene01.mask.png``: fields ``png`` and ``mask.png``)."""
from __future__ import annotations

import json
import posixpath
import tarfile
from typing import Iterator

import fsspec

from pipelines.records import ImageRecord, Rejected, Skipped
from pipelines.sources.base import (DEFAULT_LABEL_FROM, ReadTask, check_label_kinds,
                                    normalize_label, parse_label_from)
from pipelines.sources.urls import expand_urls

# The webdataset convention (``.decode().to_tuple("jpg;png;webp")``): an ordered list of image
# fields, the first one a sample has is its image. Only plain extensions: a ``mask.png``,
# ``depth.jpg`` or ``seg.png`` field is never the image unless named here.
DEFAULT_IMAGE_FIELDS = "jpg;jpeg;png;webp;gif;bmp;tif;tiff"
LABEL_KINDS = ("cls", "txt", "json")


def split_member(name: str) -> tuple[str, str]:
    """``dir/000123.seg.png`` -> (``dir/000123``, ``seg.png``): the key ends at the first dot of
    the base name, as in the webdataset library; the field keeps the member's case (``.JPG``
    stays ``JPG``; fields are matched case-insensitively)."""
    directory, base = posixpath.split(name)
    stem, _, extension = base.partition(".")
    return posixpath.join(directory, stem) if directory else stem, extension


def parse_image_fields(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"jpg;png;webp"`` (or a list) -> ``("jpg", "png", "webp")``, lower-cased, in order.
    Raises ValueError when empty."""
    items = spec.split(";") if isinstance(spec, str) else list(spec)
    fields = tuple(f.strip().lower().lstrip(".") for f in items if f.strip())
    if not fields:
        raise ValueError(f"--image-field {spec!r}: no field names")
    return fields


def _label(parts: dict[str, tuple[str, bytes]], origins: list[tuple[str, str]]) -> str | None:
    """The first origin the sample has, normalised; None when none gives a label. Raises
    ValueError (bad JSON) or UnicodeDecodeError."""
    return _label_and_field(parts, origins)[0]


def _label_and_field(parts: dict[str, tuple[str, bytes]],
                     origins: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """(label, the field it came from), or (None, None); raises as ``_label``."""
    for kind, argument in origins:
        if kind not in parts:
            continue
        raw = parts[kind][1]
        if kind == "json":
            meta = json.loads(raw.decode("utf-8").strip() or "{}")
            value = meta.get(argument) if isinstance(meta, dict) else None
        else:
            value = raw.decode("utf-8")
        label = normalize_label(value)
        if label is not None:
            return label, kind
    return None, None


def _unused(url: str, key: str, parts: dict[str, tuple[str, bytes]],
            image_fields: tuple[str, ...], origins: list[tuple[str, str]]) -> list[Skipped]:
    """The fields of a sample that ``_sample`` made a record from but did not use: every field
    but the image and the one the label came from."""
    image = next(f for f in image_fields if f in parts)
    _, label_field = _label_and_field(parts, origins)
    spec = ";".join(kind + (f":{arg}" if arg else "") for kind, arg in origins)
    return [Skipped(key, f"{url}#{member}",
                    f"field {field!r} not used: the image is {image!r} (--image-field), the "
                    f"label {'from ' + repr(label_field) if label_field else 'absent'} "
                    f"(--label-from {spec})")
            for field, (member, _) in parts.items() if field not in (image, label_field)]


def _sample(url: str, key: str, parts: dict[str, tuple[str, bytes]],
            image_fields: tuple[str, ...] = parse_image_fields(DEFAULT_IMAGE_FIELDS),
            origins: list[tuple[str, str]] | None = None) -> ImageRecord | Rejected:
    """One sample (``parts``: lower-cased field -> (real member name, bytes)) as a record: the
    image is the first of ``image_fields`` present; MissingImage when none is."""
    field = next((f for f in image_fields if f in parts), None)
    if field is None:
        return Rejected(key, f"{url}#{key}", "read", "MissingImage",
                        f"sample has no image field of {';'.join(image_fields)} "
                        f"(found: {sorted(parts)})")
    try:
        label = _label(parts, origins if origins is not None
                       else parse_label_from(DEFAULT_LABEL_FROM["webdataset"]))
    except (ValueError, UnicodeDecodeError) as error:
        return Rejected.from_exception(key, f"{url}#{key}", "read", error)
    member, data = parts[field]
    return ImageRecord(key=key, source=f"{url}#{member}", label=label, data=data)


class WebDatasetSource:
    """WebDataset shards. ``image_fields``: ordered image-field preference (``"jpg;png"``);
    ``label_from``: ordered label origins among ``cls``, ``txt``, ``json:<key>`` (see
    ``base.parse_label_from``; default ``cls;json:label``, never the ``.txt`` caption).
    Raises ValueError for a bad spec."""

    name = "webdataset"

    def __init__(self, image_fields: str = DEFAULT_IMAGE_FIELDS,
                 label_from: str = DEFAULT_LABEL_FROM["webdataset"],
                 list_skipped: bool = False) -> None:
        """``list_skipped``: also yield a ``Skipped`` for every member read past (fields not
        used as image or label, a second member of one field, tar metadata)."""
        self.list_skipped = list_skipped
        self.image_fields = parse_image_fields(image_fields)
        self.label_origins = parse_label_from(label_from)
        check_label_kinds(self.label_origins, LABEL_KINDS, "webdataset")

    def plan(self, pattern: str | list[str]) -> list[ReadTask]:
        return [ReadTask(url) for url in expand_urls(pattern)]

    def _samples(self, url: str, key: str, parts: dict) -> Iterator[ImageRecord | Rejected | Skipped]:
        result = _sample(url, key, parts, self.image_fields, self.label_origins)
        yield result
        if self.list_skipped and isinstance(result, ImageRecord):
            yield from _unused(url, key, parts, self.image_fields, self.label_origins)

    def read(self, task: ReadTask) -> Iterator[ImageRecord | Rejected | Skipped]:
        current_key, parts = None, {}
        try:
            with fsspec.open(task.url, "rb", compression="infer") as stream:
                with tarfile.open(fileobj=stream, mode="r|*") as tar:
                    for member in tar:
                        if not member.isfile():
                            continue
                        key, extension = split_member(member.name)
                        if key.startswith("__") or not extension:  # tar metadata (__index__)
                            if self.list_skipped:
                                yield Skipped(member.name, f"{task.url}#{member.name}",
                                              "not a sample member (tar metadata, or no "
                                              "'.field' after the key)")
                            continue
                        if key != current_key and current_key is not None:
                            yield from self._samples(task.url, current_key, parts)
                            parts = {}
                        current_key = key
                        handle = tar.extractfile(member)
                        # first member of a field wins (a.JPG and a.jpg: the first read)
                        field = extension.lower()
                        if field in parts:
                            if self.list_skipped:
                                yield Skipped(key, f"{task.url}#{member.name}",
                                              f"second member of field {field!r}: the first, "
                                              f"{parts[field][0]!r}, is used")
                            continue
                        parts[field] = (member.name, handle.read() if handle else b"")
        except (tarfile.TarError, OSError, EOFError) as error:
            # The rest of a broken shard is unreadable: say so once, keep what was read.
            yield Rejected.from_exception(f"{task.url}@{current_key or 'start'}", task.url,
                                          "read", error)
            return
        if current_key is not None:
            yield from self._samples(task.url, current_key, parts)
