"""Decode and validate one image before batching, so one bad image never fails a batch.

Policy (secure by default): a format allow-list checked on the decoded header, not the file
name; Pillow's decompression-bomb limit raised to an error; EXIF orientation applied; every
mode (CMYK, 16-bit, palette, alpha, animated) converted to 8-bit RGB of its first frame.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
DEFAULT_MAX_PIXELS = 64_000_000  # ~8000 x 8000; Pillow's own default warns at 89M
DEFAULT_MAX_BYTES = 50 * 1024 * 1024


class ImageRejected(ValueError):
    """An input that is not an image we accept; the message says why."""


@dataclass(frozen=True)
class DecodePolicy:
    allowed_formats: frozenset[str] = ALLOWED_FORMATS
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    min_side: int = 1


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode. 16-bit and float greyscale are rescaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes, policy: DecodePolicy = DecodePolicy()) -> Image.Image:
    """Bytes to a validated RGB image, or raise ImageRejected naming what was wrong."""
    if not data:
        raise ImageRejected("empty input (0 bytes)")
    if len(data) > policy.max_bytes:
        raise ImageRejected(f"{len(data)} bytes exceeds the limit of {policy.max_bytes}")
    try:
        image = Image.open(io.BytesIO(data), formats=sorted(policy.allowed_formats))
    except Image.UnidentifiedImageError as error:
        raise ImageRejected(
            f"not an image in an allowed format ({', '.join(sorted(policy.allowed_formats))})"
        ) from error
    except Image.DecompressionBombError as error:
        raise ImageRejected(f"too many pixels: {error}") from error
    # Image.open reads only the header: the size check runs before any pixel is decoded.
    # (No global Image.MAX_IMAGE_PIXELS mutation: workers decode on several threads.)
    width, height = image.size
    if width * height > policy.max_pixels:
        raise ImageRejected(f"{width}x{height} pixels exceeds the limit of {policy.max_pixels}")
    if min(width, height) < policy.min_side:
        raise ImageRejected(f"{width}x{height} is smaller than {policy.min_side} pixels")
    try:
        image.seek(0)  # animated GIF/WebP/multi-page TIFF: the first frame
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageRejected(f"truncated or corrupt {image.format} data: {error}") from error
    image = ImageOps.exif_transpose(image)
    return _to_rgb(image)
