"""Reading one image file into the array the model sees, the same way everywhere.

The preprocess stage (folder and CSV datasets), `cnnspec predict` and `cnnspec export`'s
checks all call `read_image`, so an image is decoded, converted and resized identically
at training and at prediction time.

Decoding is Pillow's (JPEG, PNG, BMP, WebP, GIF's first frame, TIFF, ...). Colour modes
are converted to the channels asked for:
- 1 channel: Pillow's "L" (ITU-R 601-2 luma); transparency is composited onto black first.
- 3 channels: "RGB"; palette and grayscale images are expanded, transparency is
  composited onto black (what most users expect of a PNG icon on a dark training set;
  say so in docs/datasets.md if it matters to you).

Resize policies (`data.resize`):
- `stretch`: resize to exactly (height, width), ignoring the aspect ratio.
- `center_crop`: scale so the shorter side fits, then cut the centre (torchvision's
  `Resize(shorter) + CenterCrop`, Keras' `crop_to_aspect_ratio=True`).
Both use bilinear filtering with antialiasing (Pillow's BILINEAR on reduce).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from cnnspec.errors import DataError

RESIZE_POLICIES = ("stretch", "center_crop")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class ImageReadError(DataError):
    """An image file that cannot be decoded (missing, truncated, not an image)."""


def is_image_file(path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _open(source):
    """A loaded PIL image from a path, bytes or a PIL image. Raises ImageReadError."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        return source
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
        with stream:
            image = Image.open(stream)
            image.load()  # decode now: a truncated file fails here, not later
            return image
    except FileNotFoundError:
        raise ImageReadError(f"{name}: no such image file") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as error:  # truncated, corrupt, unsupported
        first = (str(error).strip().splitlines() or ["unreadable"])[0]
        raise ImageReadError(f"{name}: damaged or unreadable image ({first})") from None
    except Image.DecompressionBombError as error:
        raise ImageReadError(f"{name}: refused, too many pixels ({error})") from None


def _convert(image, channels: int):
    from PIL import Image

    if image.mode == "P" or image.mode in ("LA", "PA", "RGBA") or "transparency" in image.info:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    if channels == 1:
        return image.convert("L")
    if channels == 3:
        return image.convert("RGB")
    raise ValueError(f"channels must be 1 or 3, not {channels}")


def _resize(image, size: tuple[int, int], policy: str):
    from PIL import Image

    height, width = size
    if image.size == (width, height):
        return image
    if policy == "stretch":
        return image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None)
    if policy == "center_crop":
        scale = max(width / image.width, height / image.height)
        scaled_w, scaled_h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
        image = image.resize((scaled_w, scaled_h), Image.Resampling.BILINEAR)
        left, top = (scaled_w - width) // 2, (scaled_h - height) // 2
        return image.crop((left, top, left + width, top + height))
    raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, not {policy!r}")


def read_image(source, channels: int, size: tuple[int, int] | None = None,
               resize: str = "stretch") -> np.ndarray:
    """Decode `source` (a path, bytes or a PIL image) to uint8 (channels, H, W).

    `size` is (height, width); None keeps the image's own size. Raises ImageReadError
    (one line naming the file) for anything that is not a readable image.
    """
    image = _convert(_open(source), channels)
    if size is not None:
        image = _resize(image, (int(size[0]), int(size[1])), resize)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array.transpose(2, 0, 1))
