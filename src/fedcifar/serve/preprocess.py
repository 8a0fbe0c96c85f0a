"""Uploaded bytes -> the uint8 (3, 32, 32) tensor the model was evaluated on.

The steps, in order:

1. Open with Pillow, accepting PNG, JPEG, WebP, GIF and BMP only. Anything else, a corrupt
   or truncated file, or an empty upload is rejected with a reason.
2. Reject decompression bombs from the header alone: an image that would decode to more than
   ``max_pixels`` (default 4096 x 4096) is never decoded. A sequential JPEG is decoded at a
   reduced DCT scale (Pillow's ``draft``), so it may declare up to ``JPEG_DRAFT_ALLOWANCE``
   times more pixels as long as what is actually decoded fits; a progressive JPEG buffers its
   coefficients at full size, so its declared size counts.
3. Decode (the first frame of an animation), then crop the centre square and shrink it to
   32 x 32 with an antialiasing bicubic filter in one ``resize`` that first reduces by an
   integer factor (``reducing_gap``): no full-size float copy is ever made. Nothing is
   stretched; a wide photo loses its sides. A 32 x 32 image is left pixel for pixel as it is,
   so a CIFAR-100 image saved as PNG reaches the model exactly as the training evaluation saw it.
4. Apply the EXIF orientation (phone photos) to the 32 x 32 result.
5. Make it RGB: 16-bit grayscale is scaled to 8 bits (not clipped), palette images are
   expanded, and transparency is composited onto white, as a browser shows it.

Normalisation with the training mean and std happens on the batch, with the training code's
own :class:`~fedcifar.data.augment.Normalize`.

Peak memory of one decode is about twice the decoded raster (the raster, plus one copy where a
mode must be converted before resampling: palette, 16-bit, or premultiplied alpha).
"""

from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError

IMAGE_SIZE = 32
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
DEFAULT_MAX_PIXELS = 4096 * 4096  # what a 32 x 32 classifier could ever need, and ~130 MB of decode at most
JPEG_DRAFT_ALLOWANCE = 4  # a sequential JPEG may declare this many times max_pixels: draft decodes it smaller
# JPEGs are decoded at a reduced DCT scale no smaller than this (much faster for photos).
_JPEG_DRAFT_SIZE = 4 * IMAGE_SIZE
_REDUCING_GAP = 3.0  # Pillow: from 3.0 on, reduce-then-resample is indistinguishable from a full resample
_TRANSPOSE = {  # EXIF orientation -> the transpose that undoes it (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageRejected(ValueError):
    """An upload that cannot be used; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode an uploaded file into a uint8 tensor (3, 32, 32), or raise :class:`ImageRejected`."""
    return finish_image(open_image(data, max_pixels))


def open_image(data: bytes | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Steps 1-2: identify the format and check the size to decode. Reads headers only: cheap.

    ``data`` is the upload's bytes or a seekable binary file holding them (the spooled upload).
    """
    fp = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    fp.seek(0)
    head = fp.read(16)
    if not head:
        raise ImageRejected(400, "the uploaded file is empty")
    fp.seek(0)
    try:
        img = Image.open(fp, formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        if (fmt := sniff_format(head)) is not None:
            raise ImageRejected(400, f"corrupt {fmt} image: its header cannot be read") from None
        raise ImageRejected(415, f"not an image in a supported format ({', '.join(ACCEPTED_FORMATS)})") from None
    except Image.DecompressionBombError as exc:
        raise ImageRejected(413, f"image rejected as a decompression bomb: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's header parsers raise all three
        raise ImageRejected(400, f"corrupt image header ({_one_line(exc)})") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageRejected(400, f"image declares an empty size {width}x{height}")
    declared_limit = max_pixels
    if img.format == "JPEG" and not img.info.get("progressive"):
        declared_limit = JPEG_DRAFT_ALLOWANCE * max_pixels
    if width * height > declared_limit:
        raise _too_large(width, height, declared_limit)
    if img.format == "JPEG":
        img.draft("RGB", (_JPEG_DRAFT_SIZE, _JPEG_DRAFT_SIZE))  # sets the size that will be decoded
        if img.size[0] * img.size[1] > max_pixels:
            raise _too_large(width, height, max_pixels, decoded=img.size)
    return img


def _too_large(width: int, height: int, limit: int, decoded: tuple[int, int] | None = None) -> ImageRejected:
    at = f" (decoded at {decoded[0]}x{decoded[1]})" if decoded and decoded != (width, height) else ""
    return ImageRejected(
        413,
        f"image declares {width}x{height} = {width * height:,} pixels{at}, over the limit of {limit:,}"
        " (decompression bomb guard)",
    )


def finish_image(img: Image.Image) -> torch.Tensor:
    """Steps 3-5 on an image from :func:`open_image`: decode, crop and shrink, orient, RGB."""
    try:
        img.seek(0)
        img.load()
        orientation = _orientation(img)
        small = shrink_square(resample_ready(img))
    except Image.DecompressionBombError as exc:
        raise ImageRejected(413, f"image rejected as a decompression bomb: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageRejected(400, f"corrupt or truncated {img.format} image ({_one_line(exc)})") from None
    if orientation in _TRANSPOSE:
        small = small.transpose(_TRANSPOSE[orientation])
    return to_tensor(to_rgb(small))


def _orientation(img: Image.Image) -> int | None:
    try:
        value = img.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # a mangled EXIF block is not worth rejecting the image over
        return None
    return value if isinstance(value, int) else None


def resample_ready(img: Image.Image) -> Image.Image:
    """The image in a mode that Pillow resamples faithfully: palettes expanded, 16-bit widened, alpha explicit.

    Resampling a palette image would pick nearest colours, 16-bit modes cannot be resampled at
    all, and a transparent colour key (``info["transparency"]``) only survives as an alpha band.
    """
    if img.mode in ("P", "PA"):
        return img.convert("RGBA")
    if img.mode == "1":
        return img.convert("L")
    if img.mode.startswith("I;16"):
        return img.convert("I")
    if "transparency" in img.info and img.mode in ("L", "RGB"):
        return img.convert("LA" if img.mode == "L" else "RGBA")
    return img


def shrink_square(img: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """Centre-crop to the largest square and resize it to ``size`` x ``size`` (reduce first, then bicubic)."""
    width, height = img.size
    if (width, height) == (size, size):
        return img
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    return img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=_REDUCING_GAP)


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


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB image -> uint8 tensor (3, H, W), the layout the training data uses."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
