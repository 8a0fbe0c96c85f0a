"""Preprocessing: any image becomes the uint8 (3, 32, 32) tensor training evaluation would see."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from fedcifar.serve.preprocess import ImageRejected, decode_image
from helpers import encode


def test_32x32_png_is_kept_pixel_for_pixel():
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(pixels)))
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
    assert torch.equal(out, torch.from_numpy(pixels).permute(2, 0, 1))


def test_aspect_ratio_is_a_centre_crop_not_a_stretch():
    # 96 x 32: red | green | blue thirds. The centre square is the green third.
    pixels = np.zeros((32, 96, 3), dtype=np.uint8)
    pixels[:, :32, 0] = 255
    pixels[:, 32:64, 1] = 255
    pixels[:, 64:, 2] = 255
    out = decode_image(encode(Image.fromarray(pixels)))
    assert out.shape == (3, 32, 32)
    assert torch.equal(out[1], torch.full((32, 32), 255, dtype=torch.uint8))
    assert out[0].max() == 0 and out[2].max() == 0


def test_large_photo_is_downscaled_with_antialiasing():
    # A fine checkerboard averages to mid-grey when shrunk properly (no aliasing to black/white).
    board = (np.indices((640, 640)).sum(0) % 2 * 255).astype(np.uint8)
    out = decode_image(encode(Image.fromarray(board).convert("RGB")))
    assert out.float().mean() == pytest.approx(127.5, abs=4)
    assert out.float().std() < 6


def test_16bit_grayscale_is_scaled_not_clipped():
    wide = np.full((32, 32), 32896, dtype=np.uint16)  # 32896 / 257 = 128
    out = decode_image(encode(Image.fromarray(wide)))
    assert torch.equal(out, torch.full((3, 32, 32), 128, dtype=torch.uint8))


def test_transparency_is_composited_on_white():
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, but fully transparent on the left half
    rgba[:, 16:, 3] = 255
    out = decode_image(encode(Image.fromarray(rgba, mode="RGBA")))
    assert torch.equal(out[:, :, :16], torch.full((3, 32, 16), 255, dtype=torch.uint8))
    assert torch.equal(out[:, :, 16:], torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 32, 16))


def test_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    out = decode_image(buf.getvalue())
    assert out[0].min() > 240 and out[2].max() < 15


def test_exif_orientation_is_applied():
    # Stored with the top half white and EXIF orientation 6 (display rotated 90 degrees
    # clockwise): as displayed, and as the model must see it, the right half is white.
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:16] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(encode(Image.fromarray(pixels), "JPEG", exif=exif, quality=95)).float()
    assert out[:, :, 20:].mean() > 230 and out[:, :, :12].mean() < 25


@pytest.mark.parametrize(
    ("data", "status"),
    [(b"", 400), (b"GIF89a" + b"\x00" * 3, 400), (b"plain text", 415), (b"\xff\xd8\xff\xe0" + b"\x00" * 20, 400)],
)
def test_rejections_carry_a_status_and_reason(data, status):
    with pytest.raises(ImageRejected) as info:
        decode_image(data)
    assert info.value.status == status and info.value.reason
