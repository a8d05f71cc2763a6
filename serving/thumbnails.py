"""Thumbnails of remembered images for the web page's evidence gallery (``GET /v1/thumbnail``).

A neighbour's ``source`` is read back through the configured roots only
(``pipelines.sources.fetch.read_sources`` with the Serve option ``allowed_source_roots``): a
stored source is data, and reading it server-side must not reach internal hosts or local files
outside the roots. The bytes are decoded under the ingest's decode limits
(``pipelines.decode.DecodePolicy``: pixels, aspect ratio, pixels per byte), shrunk to fit
``size`` x ``size`` and encoded as JPEG; recent thumbnails are kept in a bounded LRU cache.
"""
from __future__ import annotations

import io
import threading
from collections import OrderedDict

from pipelines.decode import ImageRejected, decode_image
from pipelines.sources.fetch import read_sources
from pipelines.sources.policy import SourcePolicy, SourceRefused  # noqa: F401 (re-export)

SIZES = (64, 128, 160, 256)  # pixels; the sizes served (a fixed set keeps the cache bounded)


class ThumbnailMissing(LookupError):
    """The source lies under the roots but can no longer be read (moved, deleted, synthetic)."""


class Thumbnails:
    """JPEG thumbnails by (source, size). ``policy``: the roots sources may be read from.
    ``cache_items``: thumbnails kept (about 5 KB each at 160 px). Thread-safe."""

    def __init__(self, policy: SourcePolicy, cache_items: int = 1024) -> None:
        self.policy, self.cache_items = policy, cache_items
        self.cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, source: str, size: int) -> bytes:
        """The JPEG thumbnail of ``source`` fitting ``size`` x ``size`` pixels. Raises
        ValueError (a size not in SIZES), SourceRefused (outside the roots: nothing is read),
        ThumbnailMissing, ImageRejected (over the decode limits, or not an image)."""
        if size not in SIZES:
            raise ValueError(f"size must be one of {list(SIZES)}")
        key = (source, size)
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
        data = read_sources([source], self.policy).get(source)
        if data is None:
            raise ThumbnailMissing(f"{source} cannot be read (moved, deleted, or never stored)")
        image = decode_image(data)
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        thumbnail = buffer.getvalue()
        with self.lock:
            self.cache[key] = thumbnail
            while len(self.cache) > self.cache_items:
                self.cache.popitem(last=False)
        return thumbnail


__all__ = ["SIZES", "ImageRejected", "SourceRefused", "ThumbnailMissing", "Thumbnails"]
