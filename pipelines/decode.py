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
DEFAULT_MAX_ASPECT_RATIO = 100.0  # long side / short side; a 1x16000 strip is not a photo
# Pixels per input byte, checked on images above DEFAULT_RATIO_CHECK_PIXELS: zlib cannot beat
# ~1032:1, so only near-constant low-bit-depth images go past 1000 (a 4.9 KB 6316x6316 1-bit
# PNG is 8088), while photos are < 20 and flat RGB graphics < 350.
DEFAULT_MAX_PIXELS_PER_BYTE = 1000.0
DEFAULT_RATIO_CHECK_PIXELS = 4_000_000


class ImageRejected(ValueError):
    """An input that is not an image we accept; the message says why."""


@dataclass(frozen=True)
class DecodePolicy:
    allowed_formats: frozenset[str] = ALLOWED_FORMATS
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    min_side: int = 1
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO  # long/short side; 0 disables
    max_pixels_per_byte: float = DEFAULT_MAX_PIXELS_PER_BYTE  # compression-ratio cap; 0 disables
    ratio_check_pixels: int = DEFAULT_RATIO_CHECK_PIXELS  # the cap applies above this many pixels


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
    """Bytes to a validated RGB image, or raise ImageRejected naming what was wrong.

    Every size check runs on the header, before any pixel is decoded: bytes, pixels
    (``max_pixels``), aspect ratio (``max_aspect_ratio``: a 131-byte 1x16000 PNG would make the
    shorter-side resize 256x4,096,000), and pixels per input byte (``max_pixels_per_byte`` above
    ``ratio_check_pixels``: a 4.9 KB PNG must not cost ~400 MB to decode), so the memory one
    input can take is bounded by the policy whatever its shape.
    """
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
    aspect = max(width, height) / min(width, height)
    if policy.max_aspect_ratio and aspect > policy.max_aspect_ratio:
        raise ImageRejected(f"{width}x{height} has an aspect ratio of {aspect:.0f}:1, over the "
                            f"limit of {policy.max_aspect_ratio:g}:1")
    per_byte = width * height / len(data)
    if (policy.max_pixels_per_byte and width * height > policy.ratio_check_pixels
            and per_byte > policy.max_pixels_per_byte):
        raise ImageRejected(f"{width}x{height} pixels from {len(data)} bytes ({per_byte:.0f} "
                            f"pixels per byte) exceeds the compression-ratio limit of "
                            f"{policy.max_pixels_per_byte:g}")
    try:
        image.seek(0)  # animated GIF/WebP/multi-page TIFF: the first frame
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageRejected(f"truncated or corrupt {image.format} data: {error}") from error
    image = ImageOps.exif_transpose(image)
    return _to_rgb(image)
