"""Uploaded bytes -> the uint8 (3, 32, 32) tensor the model was evaluated on.

The steps, in order:

1. Open with Pillow, accepting PNG, JPEG, WebP, GIF and BMP only. Anything else, a corrupt
   or truncated file, or an empty upload is rejected with a reason.
2. Reject decompression bombs from the header alone: an image whose declared width x height
   is over ``max_pixels`` is never decoded.
3. Take the first frame (GIF, animated WebP) and apply the EXIF orientation (phone photos).
4. Make it RGB: 16-bit grayscale is scaled to 8 bits (not clipped), palette images are
   expanded, and transparency is composited onto white, as a browser shows it.
5. Handle the aspect ratio by a centre crop to the largest square, then resize to 32 x 32
   with an antialiasing bicubic filter. Nothing is stretched; a wide photo loses its sides.
   A 32 x 32 image is left pixel for pixel as it is, so a CIFAR-100 image saved as PNG
   reaches the model exactly as the training evaluation saw it.

Normalisation with the training mean and std happens on the batch, with the training code's
own :class:`~fedcifar.data.augment.Normalize`.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SIZE = 32
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
# JPEGs are decoded at a reduced DCT scale no smaller than this (much faster for photos).
_JPEG_DRAFT_SIZE = 4 * IMAGE_SIZE


class ImageRejected(ValueError):
    """An upload that cannot be used; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def decode_image(data: bytes, max_pixels: int = 64_000_000) -> torch.Tensor:
    """Decode an uploaded file into a uint8 tensor (3, 32, 32), or raise :class:`ImageRejected`."""
    return finish_image(open_image(data, max_pixels))


def open_image(data: bytes, max_pixels: int = 64_000_000) -> Image.Image:
    """Steps 1-2: identify the format and check the declared size. Reads headers only: cheap."""
    if not data:
        raise ImageRejected(400, "the uploaded file is empty")
    try:
        img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        if (fmt := sniff_format(data)) is not None:
            raise ImageRejected(400, f"corrupt {fmt} image: its header cannot be read") from None
        raise ImageRejected(415, f"not an image in a supported format ({', '.join(ACCEPTED_FORMATS)})") from None
    except Image.DecompressionBombError as exc:
        raise ImageRejected(413, f"image rejected as a decompression bomb: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's header parsers raise all three
        raise ImageRejected(400, f"corrupt image header ({_one_line(exc)})") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageRejected(400, f"image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageRejected(
            413,
            f"image declares {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}"
            " (decompression bomb guard)",
        )
    return img


def finish_image(img: Image.Image) -> torch.Tensor:
    """Steps 3-5 on an image from :func:`open_image`: decode, RGB, crop and resize."""
    try:
        img.seek(0)
        if img.format == "JPEG":
            img.draft("RGB", (_JPEG_DRAFT_SIZE, _JPEG_DRAFT_SIZE))
        img.load()
        rgb = to_rgb(ImageOps.exif_transpose(img))
    except Image.DecompressionBombError as exc:
        raise ImageRejected(413, f"image rejected as a decompression bomb: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageRejected(400, f"corrupt or truncated {img.format} image ({_one_line(exc)})") from None
    return to_tensor(fit_square(rgb))


def sniff_format(data: bytes) -> str | None:
    """The accepted format whose signature ``data`` starts with, if any (to tell corrupt from foreign)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM"):
        return "BMP"
    return None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; see the module docstring for the rules."""
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit grayscale: scale 0..65535 to 0..255 (Pillow's own convert would clip at 255).
        wide = np.asarray(img).astype(np.float64)
        img = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8))
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def fit_square(img: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """Centre-crop to the largest square, then resize to ``size`` x ``size``."""
    if img.size == (size, size):
        return img
    return ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB image -> uint8 tensor (3, H, W), the layout the training data uses."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
