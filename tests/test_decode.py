"""Every corrupt-input kind is either decoded correctly or rejected with a reason."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.decode import DecodePolicy, ImageRejected, decode_image
from tests.conftest import encode, photo


def test_zero_bytes_rejected():
    with pytest.raises(ImageRejected, match="empty"):
        decode_image(b"")


def test_non_image_rejected():
    with pytest.raises(ImageRejected, match="not an image"):
        decode_image(b"this is a text file, not a picture\n" * 20)


def test_truncated_jpeg_rejected():
    data = encode(photo("coffee.png"), "JPEG", quality=90)
    with pytest.raises(ImageRejected, match="truncated or corrupt JPEG"):
        decode_image(data[: len(data) // 2])


def test_format_outside_allow_list_rejected():
    data = encode(photo("coffee.png").resize((32, 32)), "PPM")  # a valid image, not allowed
    with pytest.raises(ImageRejected, match="allowed format"):
        decode_image(data)


def test_too_many_pixels_rejected_before_decoding():
    big = encode(Image.new("RGB", (4000, 3000), "white"), "PNG")  # compresses to a few KB
    with pytest.raises(ImageRejected, match="exceeds the limit"):
        decode_image(big, DecodePolicy(max_pixels=10_000_000))
    assert decode_image(big, DecodePolicy(max_pixels=20_000_000)).size == (4000, 3000)


def test_oversized_file_rejected():
    with pytest.raises(ImageRejected, match="bytes exceeds"):
        decode_image(encode(photo("coffee.png"), "PNG"), DecodePolicy(max_bytes=1000))


def test_cmyk_jpeg_becomes_matching_rgb():
    rgb = photo("coffee.png")
    decoded = decode_image(encode(rgb.convert("CMYK"), "JPEG", quality=95))
    assert decoded.mode == "RGB" and decoded.size == rgb.size
    # JPEG loss plus a CMYK round trip: mean absolute error of a few grey levels.
    assert np.abs(np.asarray(decoded, float) - np.asarray(rgb, float)).mean() < 12


def test_sixteen_bit_png_is_rescaled_not_clipped():
    ramp = (np.arange(256 * 64, dtype=np.uint32).reshape(64, 256) * 4).astype(np.uint16)
    decoded = decode_image(encode(Image.fromarray(ramp), "PNG"))
    pixels = np.asarray(decoded)
    assert decoded.mode == "RGB"
    assert pixels.min() == 0 and pixels.max() == 255  # full range used, nothing saturated
    assert np.all(np.diff(pixels[..., 0].reshape(-1).astype(int)) >= 0)  # order kept


def test_animated_gif_embeds_first_frame():
    frames = [Image.new("RGB", (40, 30), colour) for colour in ("red", "blue", "green")]
    buffer = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    decoded = decode_image(buffer)
    assert decoded.size == (40, 30)
    assert tuple(np.asarray(decoded)[0, 0]) == (255, 0, 0)


def test_exif_orientation_applied():
    image = photo("chelsea.png")  # 451 x 300, landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (image.height, image.width)


def test_transparency_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    decoded = decode_image(encode(rgba, "PNG"))
    assert tuple(np.asarray(decoded)[0, 0]) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF"])
def test_allowed_formats_decode(fmt):
    decoded = decode_image(encode(photo("astronaut.png").resize((64, 64)), fmt))
    assert decoded.mode == "RGB" and decoded.size == (64, 64)
