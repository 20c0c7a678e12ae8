"""Reading one image file into the array the model sees, the same way everywhere.

The preprocess stage (folder and CSV datasets), `cnnspec predict` and `cnnspec export`'s
checks all call `read_image`, so an image is decoded, converted and resized identically
at training and at prediction time.

Decoding is Pillow's, limited to JPEG, PNG, BMP, WebP, GIF's first frame and TIFF (a file
in any other format, e.g. PostScript named .png, is refused unread). Colour modes
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

import contextlib
import io
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnspec.errors import DataError, first_line, on_one_line
from cnnspec.regular_files import not_a_regular_file

RESIZE_POLICIES = ("stretch", "center_crop")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# The only decoders Pillow may use, whatever a file's name or content claims: Pillow picks
# the decoder from the content, and some (EPS: Ghostscript, a PostScript interpreter) run
# what the file holds.
READ_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
NOT_READ = "not an image cnnspec reads (JPEG, PNG, BMP, GIF, WebP or TIFF)"


class ImageReadError(DataError):
    """An image file that cannot be decoded (missing, truncated, not an image)."""


def is_image_file(path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


# The most pixels cnnspec decodes from one file, refused in one line before any is decoded.
# A JPEG read reduced (draft mode) counts the pixels it is reduced to. Pillow's own bound
# (PIL.Image.MAX_IMAGE_PIXELS, 89 million: a warning, twice that an error) stays the user's
# for every other file.
MAX_PIXELS = 50_000_000
# Integer and float modes with more than 8 bits per pixel (16-bit PNG and TIFF, 32-bit
# integer, 32-bit float): Pillow's convert() would clip them to 255.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_noted: set[str] = set()


def note(message: str) -> None:
    """One line on stderr, once per message: Pillow's warnings in cnnspec's voice. A file's
    name in it may hold a line break or an escape sequence: they are printed escaped."""
    import sys

    if message not in _noted:
        _noted.add(message)
        print(f"note: {on_one_line(message)}", file=sys.stderr)


def open_image(stream):
    """Pillow's Image.open limited to READ_FORMATS: reads the header only. A JPEG beyond
    Pillow's own pixel bound (a 200-megapixel phone photo) is opened by its plugin: it is
    decoded reduced or not at all, MAX_PIXELS bounding what decoding holds."""
    from PIL import Image

    try:
        return Image.open(stream, formats=READ_FORMATS)
    except Image.DecompressionBombError:
        if _first_bytes(stream, 3) != b"\xff\xd8\xff":  # not a JPEG: Pillow's bound stands
            raise
        from PIL import JpegImagePlugin

        return JpegImagePlugin.JpegImageFile(stream)


def _first_bytes(source, count: int) -> bytes:
    """The first `count` bytes of a path or a seekable stream (left at its start)."""
    if hasattr(source, "seek"):
        source.seek(0)
        start = source.read(count)
        source.seek(0)
        return start
    with open(source, "rb") as file:
        return file.read(count)


# A progressive JPEG is decoded over the whole image once per scan, and nothing in the
# format bounds their number: one scan repeated 20,000 times in a 2.1 MB file of 7000x7000
# pixels took 72 s to decode. Real ones have a few: libjpeg writes 10 for a colour image.
MAX_JPEG_SCANS = 100
# A marker: 0xFF, any 0xFF fill bytes, then its code. Inside a scan's entropy-coded data a
# 0xFF byte is followed by 0x00 (a stuffed 0xFF) or a restart marker, neither a new segment.
_JPEG_MARKER = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")
_STANDALONE_MARKERS = (0x01, 0xD8)  # TEM, SOI: no length follows
_SOS, _EOI = 0xDA, 0xD9


def jpeg_scans(data, limit: int) -> int:
    """The scans (SOS markers) a JPEG decoder meets in `data` (bytes or an mmap) before
    its end of image, counted up to `limit` + 1. The segments are walked as the decoder
    walks them, by their lengths, so bytes inside EXIF, an ICC profile or a video appended
    after the image are not taken for markers."""
    scans, position = 0, 0
    while scans <= limit and (found := _JPEG_MARKER.search(data, position)):
        code, position = data[found.end() - 1], found.end()
        if code == _EOI:
            break
        if code in _STANDALONE_MARKERS:
            continue
        if code == _SOS:
            scans += 1
        position += max(2, int.from_bytes(data[position:position + 2], "big"))
    return scans


@contextlib.contextmanager
def _contents(stream):
    """The bytes of an open file or BytesIO: bytes, or for a large file an mmap (both have
    find), so that it is not read into memory."""
    if isinstance(stream, io.BytesIO):
        yield stream.getvalue()
    elif os.fstat(stream.fileno()).st_size <= 1 << 20:  # cheaper read than mapped
        stream.seek(0)
        yield stream.read()
    else:
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as view:
            yield view


def _occurs_more_than(data, pattern: bytes, limit: int) -> bool:
    position = 0
    for _ in range(limit + 1):
        position = data.find(pattern, position) + 1
        if not position:
            return False
    return True


def _refuse_too_many_scans(stream, name: str) -> None:
    with _contents(stream) as data:
        # Every scan starts with the bytes FF DA, so a file holding them no more than
        # MAX_JPEG_SCANS times (any real one) needs no walk through its segments.
        if _occurs_more_than(data, b"\xff\xda", MAX_JPEG_SCANS) and jpeg_scans(data, MAX_JPEG_SCANS) > MAX_JPEG_SCANS:
            raise ImageReadError(f"{name}: refused, a JPEG of more than {MAX_JPEG_SCANS} scans (real ones have "
                                 "about 10; each one decodes the whole image again)")


def _refuse_too_many_pixels(pixels: int, name: str) -> None:
    """MAX_PIXELS bounds what decoding holds: a baseline JPEG decoded reduced (draft mode)
    never holds its full size, so a 108-megapixel phone photo reads at an eighth of its
    sides; a progressive one keeps coefficients for every pixel of every scan."""
    if pixels > MAX_PIXELS:
        raise ImageReadError(f"{name}: refused, more than {MAX_PIXELS:,} pixels (a decompression "
                             f"bomb, or a photo far larger than any model input)")


def _open(source, size: tuple[int, int] | None = None):
    """A loaded PIL image from a path, bytes or a PIL image. Raises ImageReadError.
    With `size` (height, width) a large JPEG is decoded already reduced (Pillow's draft
    mode: 1/2, 1/4 or 1/8 of its size, never below `size`), so memory stays small."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        return source
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    if not isinstance(source, (bytes, bytearray)):
        problem = not_a_regular_file(source)
        if problem == "missing":
            raise ImageReadError(f"{name}: no such image file")
        if problem:  # opening a FIFO would block; say what it is instead
            raise ImageReadError(f"{name}: {problem}, not an image file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
            with stream:
                image = open_image(stream)  # the header only: the size is known, nothing decoded
                full_size = image.width * image.height
                jpeg = image.format in ("JPEG", "MPO")  # MPO: a phone's JPEG with a multi-picture block
                progressive = jpeg and bool(image.info.get("progressive") or image.info.get("progression"))
                if size is not None and jpeg:
                    image.draft(image.mode, (int(size[1]), int(size[0])))
                _refuse_too_many_pixels(full_size if progressive else image.width * image.height, name)
                if progressive:
                    _refuse_too_many_scans(stream, name)  # only a progressive JPEG decodes scan after scan
                image.load()  # decode now: a truncated file fails here, not later
        # Pillow's warning of a large image: the bound above is cnnspec's, on what is decoded
        caught = [warning for warning in caught if warning.category is not Image.DecompressionBombWarning]
        for warning in caught:
            message = str(warning.message)
            note(f"{name}: {message.splitlines()[0] if message else warning.category.__name__}")
        return image
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{name}: no such image file") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: {NOT_READ}") from None
    except Image.DecompressionBombError as error:  # Pillow's own bound, PIL.Image.MAX_IMAGE_PIXELS
        raise ImageReadError(f"{name}: refused by Pillow ({first_line(error, 'a decompression bomb')})") from None
    except Exception as error:  # noqa: BLE001 - truncated, corrupt, unsupported: a hostile file can make
        # Pillow's parsers raise almost anything (OSError, ValueError, SyntaxError, and also
        # TypeError from a TIFF whose strip offsets are fractions), and all of them mean this
        first = first_line(error, "unreadable")
        raise ImageReadError(f"{name}: damaged or unreadable image ({first})") from None


ROTATING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def exif_orientation(image) -> int:
    """The EXIF orientation tag (1-8; 1 when there is none or it cannot be read)."""
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - damaged EXIF: the pixels as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(image):
    """`image` turned as its EXIF orientation says, the way viewers show it (a phone photo
    is often stored sideways with orientation 6); unchanged when there is none."""
    from PIL import ImageOps

    if exif_orientation(image) == 1:
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - damaged EXIF: the pixels as stored
        return image


def _to_eight_bits(image, name: str):
    """A 16-bit, 32-bit integer or float image as 8-bit "L", scaled by its real range:
    16-bit values by 65535 (what a 16-bit PNG's values mean), 32-bit integer and float
    values by the smallest of 0..1, 0..255, 0..65535 that holds them, else by their own
    minimum and maximum. NaN or infinite pixels are refused."""
    from PIL import Image

    # In its own 16- or 32-bit type, and converted a band of rows at a time: float64 copies of
    # a whole 11-megapixel 16-bit image took 300 MB.
    values = np.asarray(image)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ImageReadError(f"{name}: mode {image.mode} image with NaN or infinite pixels")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode.startswith("I;16"):
        low, top = 0.0, 65535.0
    else:
        top = next((limit for limit in (1.0, 255.0, 65535.0) if low >= 0 and high <= limit), None)
        low = 0.0 if top is not None else low
        top = top if top is not None else (high if high > low else low + 1)
    scaled = np.empty(values.shape, dtype=np.uint8)
    rows = max(1, (1 << 20) // max(1, values[0].size if len(values) else 1))  # about 1M pixels
    for start in range(0, len(values), rows):
        block = values[start:start + rows].astype(np.float64)
        scaled[start:start + rows] = np.clip(np.rint((block - low) * (255.0 / (top - low))), 0, 255)
    return Image.fromarray(scaled, mode="L")


def _convert(image, channels: int, name: str = "<image>"):
    from PIL import Image

    if image.mode in WIDE_MODES:
        image = _to_eight_bits(image, name)
    elif image.mode not in ("1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX", "RGBa", "La", "CMYK",
                            "YCbCr", "LAB", "HSV"):
        raise ImageReadError(f"{name}: image mode {image.mode} is not supported (8-bit gray or "
                             f"colour, 16-bit or float gray are)")
    if image.mode == "P" or image.mode in ("LA", "PA", "RGBA") or "transparency" in image.info:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    mode = "L" if channels == 1 else "RGB"
    try:
        return image.convert(mode)
    except ValueError:  # Pillow converts some modes only by way of RGB (a CIELab TIFF to gray)
        try:
            return image.convert("RGB").convert(mode)
        except ValueError:
            raise ImageReadError(f"{name}: its image mode {image.mode} cannot be converted to "
                                 f"{'gray' if channels == 1 else 'RGB'}") from None


def _resize(image, size: tuple[int, int], policy: str, name: str = "<image>"):
    from PIL import Image

    height, width = size
    if image.size == (width, height):
        return image
    if policy == "stretch":
        return image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None)
    if policy == "center_crop":
        scale = max(width / image.width, height / image.height)
        scaled_w, scaled_h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
        # a 2 KB PNG of 1,000,000x2 pixels scales to 28x14,000,000; what is cut off is bounded, not
        # the size asked for (stretch makes 8192x8192 too)
        if scaled_w * scaled_h - width * height > MAX_PIXELS:
            raise ImageReadError(f"{name}: refused, {image.width}x{image.height} pixels is too elongated to "
                                 f"center_crop to {width}x{height} (scaled first, it would hold "
                                 f"{scaled_w * scaled_h:,} pixels, {scaled_w * scaled_h - width * height:,} "
                                 f"of them cut off: more than {MAX_PIXELS:,})")
        image = image.resize((scaled_w, scaled_h), Image.Resampling.BILINEAR)
        left, top = (scaled_w - width) // 2, (scaled_h - height) // 2
        return image.crop((left, top, left + width, top + height))
    raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, not {policy!r}")


GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def is_gray(image) -> bool:
    """Whether `image` holds gray levels only: a gray mode, or a palette of grays."""
    if image.mode == "P":
        palette = image.getpalette() or []
        return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))
    return image.mode in GRAY_MODES


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray    # uint8 (channels, H, W)
    resized: bool         # its own (upright) size was not the size asked for
    lost_colour: bool     # a colour image read as one channel


def read_image(source, channels: int, size: tuple[int, int] | None = None,
               resize: str = "stretch") -> np.ndarray:
    """Decode `source` (a path, bytes or a PIL image) to uint8 (channels, H, W).

    `size` is (height, width); None keeps the image's own size. Raises ImageReadError
    (one line naming the file) for anything that is not a readable image.
    """
    return decode_image(source, channels, size, resize).pixels


def decode_image(source, channels: int, size: tuple[int, int] | None = None,
                 resize: str = "stretch") -> Decoded:
    """read_image's pixels, and whether it resized the image or dropped its colour."""
    name = ("<bytes>" if isinstance(source, (bytes, bytearray))
            else str(source) if isinstance(source, (str, Path)) else "<image>")
    image = upright(_open(source, size))  # the EXIF orientation, of a PIL image too (upright once: it drops the tag)
    lost_colour = channels == 1 and not is_gray(image)
    image = _convert(image, channels, name)
    resized = size is not None and image.size != (int(size[1]), int(size[0]))
    if resized:
        image = _resize(image, (int(size[0]), int(size[1])), resize, name)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return Decoded(np.ascontiguousarray(array.transpose(2, 0, 1)), resized, lost_colour)
