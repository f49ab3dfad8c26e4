"""decode_image: every supported format and mode comes out as upright HWC uint8 RGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from amg_lightning.data.decode import decode_image


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture
def rgb() -> np.ndarray:
    """Flat colour blocks, so lossy formats stay close to the original on average."""
    pixels = np.zeros((48, 64, 3), dtype=np.uint8)
    pixels[:16, :32] = (200, 30, 60)
    pixels[:16, 32:] = (20, 180, 90)
    pixels[16:] = (40, 60, 220)
    return pixels


@pytest.mark.parametrize(
    ("fmt", "tolerance"),
    [("PNG", 0), ("BMP", 0), ("TIFF", 0), ("JPEG", 4), ("WEBP", 4)],
)
def test_rgb_formats(rgb: np.ndarray, fmt: str, tolerance: int) -> None:
    decoded = decode_image(encode(Image.fromarray(rgb), fmt))
    assert decoded.dtype == np.uint8
    assert decoded.shape == rgb.shape
    assert np.abs(decoded.astype(int) - rgb).mean() <= tolerance


def test_grayscale_jpg_becomes_three_equal_channels() -> None:
    gray = np.tile(np.arange(0, 240, 4, dtype=np.uint8), (30, 1))
    decoded = decode_image(encode(Image.fromarray(gray, mode="L"), "JPEG", quality=95))
    assert decoded.shape == (30, 60, 3)
    assert (decoded[..., 0] == decoded[..., 1]).all() and (decoded[..., 1] == decoded[..., 2]).all()
    assert np.abs(decoded[..., 0].astype(int) - gray).max() <= 6


def test_rgba_png_drops_alpha(rgb: np.ndarray) -> None:
    alpha = np.zeros(rgb.shape[:2], dtype=np.uint8)
    rgba = np.dstack([rgb, alpha])
    decoded = decode_image(encode(Image.fromarray(rgba, mode="RGBA"), "PNG"))
    np.testing.assert_array_equal(decoded, rgb)


def test_la_and_palette_pngs_become_rgb(rgb: np.ndarray) -> None:
    gray_alpha = Image.fromarray(np.full((10, 12, 2), 77, dtype=np.uint8), mode="LA")
    np.testing.assert_array_equal(decode_image(encode(gray_alpha, "PNG")), np.full((10, 12, 3), 77))

    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    np.testing.assert_array_equal(decode_image(encode(palette, "PNG")), rgb)


def test_sixteen_bit_png_is_scaled_to_eight_bit() -> None:
    wide = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    decoded = decode_image(encode(Image.fromarray(wide), "PNG"))
    np.testing.assert_array_equal(decoded[0, :, 0], [0, 1, 128, 255])
    assert decoded.shape == (1, 4, 3)


def test_exif_orientation_is_applied(rgb: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: rotate 90° clockwise to view
    data = encode(Image.fromarray(rgb), "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_image(data)
    assert decoded.shape == (64, 48, 3)
    expected = np.rot90(rgb, k=-1)
    assert np.abs(decoded.astype(int) - expected).mean() <= 4


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\x00" * 20])
def test_unreadable_bytes_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="cannot decode image"):
        decode_image(data)


def test_truncated_png_raises_value_error(rgb: np.ndarray) -> None:
    data = encode(Image.fromarray(rgb), "PNG")
    with pytest.raises(ValueError, match="cannot decode image"):
        decode_image(data[: len(data) // 2])
