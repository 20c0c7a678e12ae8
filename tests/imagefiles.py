"""Real images as files for the tests: Debian's Fashion-MNIST written as PNG / JPEG
into class folders or beside a CSV, and a small colour set in mixed formats."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cnnspec.data.datasets import FASHION_CLASSES, read_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")


def fashion_subset(n_train: int, n_test: int, seed: int = 0):
    """(train_images, train_labels, test_images, test_labels): the first images of
    each idx split, uint8 (N, 28, 28) and int64."""
    def split(prefix, n):
        images = read_idx(FASHION / f"{prefix}-images-idx3-ubyte.gz", rank=3)[:n]
        labels = read_idx(FASHION / f"{prefix}-labels-idx1-ubyte.gz", rank=1)[:n].astype(np.int64)
        return np.array(images), labels
    return (*split("train", n_train), *split("t10k", n_test))


def class_folder_name(label: int) -> str:
    return FASHION_CLASSES[label].replace("/", "-")  # "T-shirt/top" cannot be a folder name


def write_image_folder(root: Path, images, labels, suffix=".png", split: str | None = None,
                       start: int = 0) -> list[Path]:
    """root/[split/]<class>/<index><suffix>, one file per image; returns the paths."""
    from PIL import Image

    paths = []
    for index, (image, label) in enumerate(zip(images, labels), start=start):
        folder = root / split / class_folder_name(label) if split else root / class_folder_name(label)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index:06d}{suffix}"
        Image.fromarray(image).save(path, quality=95) if suffix == ".jpg" else Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_colour_set(root: Path, per_class: int = 6) -> dict:
    """Two colour classes (reddish 'warm', bluish 'cool') in every format and mode
    Pillow writes, at mixed sizes: {path: expected dominant channel}."""
    from PIL import Image

    rng = np.random.default_rng(0)
    formats = [(".jpg", "RGB"), (".png", "RGBA"), (".bmp", "RGB"), (".webp", "RGB"),
               (".png", "P"), (".png", "L"), (".jpeg", "RGB"), (".gif", "P")]
    expected = {}
    for name, channel in (("warm", 0), ("cool", 2)):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            suffix, mode = formats[index % len(formats)]
            height, width = int(rng.integers(12, 80)), int(rng.integers(12, 80))
            pixels = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
            pixels[:, :, channel] = rng.integers(180, 256, size=(height, width), dtype=np.uint8)
            image = Image.fromarray(pixels)
            if mode == "L":  # grayscale: the warm/cool cue is the brightness pattern only
                image = image.convert("L")
            elif mode == "P":
                image = image.quantize(16)
            elif mode == "RGBA":
                image = image.convert("RGBA")
            path = folder / f"{index:03d}{suffix}"
            image.save(path)
            expected[path] = None if mode == "L" else channel
    return expected
