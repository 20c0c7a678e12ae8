"""What a few hundred image headers, spread over the dataset, say before decoding:
the size and channels `auto` picks (data.image_size, data.channels), and the notes
preprocess prints when the chosen size stretches, enlarges or resizes the images.
"""
from __future__ import annotations

import collections

import numpy as np

from cnnspec.data.images import GRAY_MODES, ROTATING_ORIENTATIONS, exif_orientation, is_gray, open_image
from cnnspec.regular_files import not_a_regular_file

SIZE_SAMPLE = 256   # image headers read, spread over the dataset, for image_size and channels: auto
AUTO_SIDE = 64      # data.image_size: auto scales larger images down to fit this square


def sample_images(paths: list[str], sample: int = SIZE_SAMPLE) -> list[tuple[int, int, str]]:
    """(height, width, mode) of up to `sample` of the images, spread over the list, read
    from the file headers (no decoding). Unreadable files are left out: decoding names them."""
    import warnings

    from PIL import Image

    spread = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), sample)).round().astype(int))
    found = []
    for path in (paths[i] for i in spread):
        if not_a_regular_file(path):  # a FIFO would block the open: decoding names it
            continue
        try:
            with warnings.catch_warnings():
                # Pillow warns of a large image from its header; decoding applies cnnspec's bound
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = open_image(path)
            with image:
                mode = image.mode
                if mode == "P":  # a palette: grayscale only if every entry is
                    mode = "L" if is_gray(image) else "RGB"
                turned = exif_orientation(image) in ROTATING_ORIENTATIONS  # read_image turns it upright
                found.append((image.width, image.height, mode) if turned else (image.height, image.width, mode))
        except Exception:  # a damaged file: the decoding pass reports it under data.bad_images
            continue
    return found


def auto_image_size(sample) -> list[int]:
    """data.image_size: auto: the most common size, scaled down (aspect kept) to fit AUTO_SIDE."""
    if not sample:
        return [32, 32]
    sizes = collections.Counter((height, width) for height, width, _ in sample)
    height, width = sizes.most_common(1)[0][0]
    scale = min(1.0, AUTO_SIDE / max(height, width))
    return [max(1, round(height * scale)), max(1, round(width * scale))]


def auto_channels(sample) -> int:
    """data.channels: auto: 1 when every sampled image is grayscale, else 3."""
    return 1 if sample and all(mode in GRAY_MODES for _, _, mode in sample) else 3


def resize_note(sample, size, policy: str, auto: bool = False) -> str:
    """One line saying whether and how the images are resized: `images 8x8 -> 32x32 (stretch)`."""
    target = f"{size[0]}x{size[1]}"
    why = "data.image_size: auto" if auto else "data.image_size"
    sizes = {(height, width) for height, width, _ in sample}
    if not sizes:
        return f"images resized to {target} ({why}; data.resize: {policy})"
    if sizes == {tuple(size)}:
        return f"images {target} ({why}): not resized"
    by_area = sorted(sizes, key=lambda hw: (hw[0] * hw[1], hw))
    smallest, largest = by_area[0], by_area[-1]
    found = (f"{smallest[0]}x{smallest[1]}" if len(sizes) == 1
             else f"{len(sizes)} sizes, {smallest[0]}x{smallest[1]} to {largest[0]}x{largest[1]} (by area)")
    return f"images {found} -> {target} ({why}; data.resize: {policy})"


ENLARGE_NOTED = 2  # a data.image_size this many times the largest sampled image's side, or more


def enlarge_note(sample, size, images: int, channels: int) -> str | None:
    """One note when data.image_size blows every sampled image up: enlarging adds no
    detail, only pixels to store and compute on."""
    if not sample:
        return None
    height, width = max(((h, w) for h, w, _ in sample), key=lambda hw: hw[0] * hw[1])
    factor = min(size[0] / height, size[1] / width)
    if factor < ENLARGE_NOTED:
        return None
    gigabytes = images * channels * size[0] * size[1] / 1e9
    return (f"note: data.image_size {size[0]}x{size[1]} enlarges even the largest images sampled ({height}x{width}) "
            f"{factor:.0f}x a side: no detail is added, and the prepared images take {gigabytes:.1f} GB; "
            "data.image_size: auto keeps their own size")


def beyond_the_sample(sample, size, policy: str, channels_auto: bool, resized: int,
                      lost_colour: int) -> tuple[str | None, str | None]:
    """The lines that correct what the sampled headers said, once decoding found more: the
    `resized` images of another size where every sampled one fitted ('not resized'), the
    `lost_colour` colour images where every sampled one was gray (data.channels: auto chose 1)."""
    resized_line = lost_colour_line = None
    if resized and {(height, width) for height, width, _ in sample} == {tuple(size)}:
        resized_line = (f"decoding found {resized} image{'s' * (resized != 1)} not "
                        f"{size[0]}x{size[1]}, unlike the {len(sample)} sampled: resized to {size[0]}x{size[1]} "
                        f"(data.resize: {policy})")
    if lost_colour and channels_auto:
        lost_colour_line = (f"warning: decoding found {lost_colour} colour "
                            f"image{'s' * (lost_colour != 1)}, unlike the {len(sample)} sampled: read as "
                            "gray (data.channels: auto chose 1); set data.channels: 3 to keep their colour")
    return resized_line, lost_colour_line


# Sampled images whose width/height ratios differ by this factor or more (4:3 landscape and
# 3:4 portrait: 1.78) cannot all be stretched to one shape without visibly squeezing some.
MIXED_ASPECT = 1.5


def stretch_warning(sample, size, policy: str) -> str | None:
    """A warning line when data.resize: stretch would squeeze sampled images of very
    different proportions (portrait and landscape photos) to one shape."""
    if policy != "stretch" or not sample:
        return None
    by_ratio = sorted({(height, width) for height, width, _ in sample}, key=lambda hw: hw[1] / hw[0])
    (tall_h, tall_w), (wide_h, wide_w) = by_ratio[0], by_ratio[-1]
    if (wide_w / wide_h) / (tall_w / tall_h) < MIXED_ASPECT:
        return None
    return (f"warning: the sampled images mix proportions, {tall_h}x{tall_w} to {wide_h}x{wide_w} (height x "
            f"width): data.resize: stretch squeezes every one to {size[0]}x{size[1]}; data.resize: "
            "center_crop keeps their proportions")
