"""read_image: one decoding path for preprocess, predict and export checks."""
import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnspec.data.images import ImageReadError, read_image

FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def fashion_images(count):
    if not FASHION.exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    with gzip.open(FASHION, "rb") as handle:
        data = handle.read(16 + 28 * 28 * count)
    return np.frombuffer(data, np.uint8, offset=16).reshape(count, 28, 28)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".webp"])
def test_lossless_formats_round_trip_real_images(tmp_path, suffix):
    for index, pixels in enumerate(fashion_images(5)):
        path = tmp_path / f"{index}{suffix}"
        Image.fromarray(pixels).save(path, **({"lossless": True} if suffix == ".webp" else {}))
        assert np.array_equal(read_image(path, channels=1)[0], pixels)


def test_jpeg_is_close_and_channels_are_converted(tmp_path):
    pixels = fashion_images(1)[0]
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=95)
    gray = read_image(tmp_path / "a.jpg", channels=1)
    assert gray.shape == (1, 28, 28)
    assert np.abs(gray[0].astype(int) - pixels).mean() < 4
    rgb = read_image(tmp_path / "a.jpg", channels=3)
    assert rgb.shape == (3, 28, 28) and np.array_equal(rgb[0], rgb[2])


def test_palette_and_rgba_become_rgb_with_transparency_on_black(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png", channels=3)
    assert out[0, 0, 0] == 200 and out[0, 3, 0] == 0
    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png", channels=3).shape == (3, 4, 4)


def test_resize_policies(tmp_path):
    wide = np.zeros((10, 40), np.uint8)
    wide[:, 15:25] = 255  # a bright centre band
    Image.fromarray(wide).save(tmp_path / "wide.png")
    stretched = read_image(tmp_path / "wide.png", 1, (20, 20), "stretch")
    cropped = read_image(tmp_path / "wide.png", 1, (20, 20), "center_crop")
    assert stretched.shape == cropped.shape == (1, 20, 20)
    # stretch keeps the dark sides, the centre crop shows only the bright band's surroundings
    assert stretched[0, :, 0].max() == 0
    assert cropped[0, 10].min() < 255 and cropped[0, 10, 10] == 255
    assert cropped.mean() > stretched.mean()


def test_unreadable_images_name_the_file(tmp_path):
    pixels = fashion_images(1)[0]
    Image.fromarray(pixels).save(tmp_path / "good.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "good.jpg").read_bytes()[:200])
    (tmp_path / "text.png").write_text("not an image")
    for name in ("cut.jpg", "text.png", "missing.png"):
        with pytest.raises(ImageReadError, match=name):
            read_image(tmp_path / name, channels=1)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n/Times-Roman findfont 12 scalefont setfont\nshowpage\n"


def test_a_postscript_file_named_png_never_reaches_ghostscript(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    from cnnspec.data.image_sample import sample_images

    ran = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: ran.append(args))
    path = tmp_path / "eps_as.png"
    path.write_bytes(EPS)
    with pytest.raises(ImageReadError) as caught:
        read_image(path, channels=1, size=(28, 28))
    assert str(caught.value) == f"{path}: not an image cnnspec reads (JPEG, PNG, BMP, GIF, WebP or TIFF)"
    with pytest.raises(ImageReadError, match="not an image cnnspec reads"):
        read_image(EPS, channels=1)
    assert sample_images([str(path)]) == []  # its header is not read as an image's either
    assert ran == []


def test_sampling_the_size_of_a_large_photo_prints_no_pillow_warning(tmp_path, monkeypatch):
    import warnings

    from cnnspec.data.image_sample import sample_images

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)  # Pillow warns from here, as from 89 M pixels
    Image.new("RGB", (150, 120)).save(tmp_path / "phone.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sample_images([str(tmp_path / "phone.jpg")]) == [(120, 150, "RGB")]


def test_only_the_formats_cnnspec_names_are_decoded(tmp_path):
    pixels = fashion_images(1)[0]
    for suffix in (".png", ".jpg", ".bmp", ".gif", ".webp", ".tif"):
        Image.fromarray(pixels).save(tmp_path / f"real{suffix}")
        assert read_image(tmp_path / f"real{suffix}", channels=1).shape == (1, 28, 28)
    for pillow_format in ("PPM", "PCX", "TGA", "ICO"):  # Pillow reads these, cnnspec does not
        path = tmp_path / f"{pillow_format}.png"
        Image.fromarray(pixels).save(path, format=pillow_format)
        with pytest.raises(ImageReadError, match="not an image cnnspec reads"):
            read_image(path, channels=1)
