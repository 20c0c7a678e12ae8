"""Files that are not what they claim: a FIFO where a spec or an image should be, a
16-bit PNG, a pixel bomb, a symlink loop, a NUL in a CSV path, a class too small for
its splits. Each is named in one line and nothing blocks."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnspec.data import listing, user_datasets
from cnnspec.data.images import MAX_PIXELS, ImageReadError, read_image
from cnnspec.errors import DataError, ParamsError, SpecError
from cnnspec.pipeline.params import load_params
from cnnspec.spec.reader import load_spec
from tests.imagefiles import class_folder_name, fashion_subset, write_csv, write_image_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fashion():
    return fashion_subset(60, 1)


def data_params(**changes) -> dict:
    data = load_params(ROOT / "params.yaml", ["data"])["data"]
    data.update(dataset="folder", image_size=[28, 28], channels=1, val_split=0.1, test_split=0.2)
    data.update(changes)
    return data


# ---------------------------------------------------------------- the spec reader

def test_validate_answers_a_fifo_a_device_and_a_huge_file_at_once(tmp_path):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)  # nobody writes: opening it would block for ever
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as file:
        file.truncate(4 << 30)  # 4 GiB, sparse
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cnnspec.cli", "validate", str(fifo), "/dev/zero", str(huge)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "CNNSPEC_DEBUG": ""})
    assert time.monotonic() - started < 10
    lines = done.stderr.splitlines()
    assert done.returncode == 1 and len(lines) == 3, done.stderr
    assert "named pipe (FIFO)" in lines[0] and "character device" in lines[1]
    assert "larger than 1,048,576 bytes" in lines[2] and str(huge) in lines[2]


def test_params_yaml_that_is_a_fifo_is_one_line(tmp_path):
    os.mkfifo(tmp_path / "params.yaml")
    with pytest.raises(ParamsError, match="named pipe"):
        load_params(tmp_path / "params.yaml", ["data"])


def test_a_symlink_loop_spec_is_named(tmp_path):
    (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
    with pytest.raises(SpecError, match="symlink loop"):
        load_spec(tmp_path / "a.yaml")


@pytest.mark.parametrize("make, words", [
    (lambda path: os.mkfifo(path), "a named pipe (FIFO), not a regular file"),
    (lambda path: path.write_bytes(b"[" * 1020), "nested too deeply"),
    (lambda path: path.write_bytes(b'{"a": "\xff"}'), "not UTF-8 text"),
    (lambda path: path.write_text('{"a": 1'), "not JSON ("),
    (lambda path: path.write_text(" " * 2048 + "{}"), "larger than 1,024 bytes"),
    (lambda path: None, "missing"),
], ids=["fifo", "nested", "bytes", "cut", "large", "missing"])
def test_every_json_file_is_read_bounded_and_its_problem_named(tmp_path, make, words):
    from cnnspec.regular_files import read_json

    path = tmp_path / "meta.json"
    make(path)
    with pytest.raises(ValueError) as caught:
        read_json(path, limit=1024)
    assert str(caught.value).startswith(words)


def test_prepared_data_whose_meta_json_is_a_fifo_or_nested_is_one_line(tmp_path):
    """meta.json from someone's DVC cache: a FIFO no longer blocks the stage, nor reads as missing."""
    from cnnspec.data.datasets import load_prepared

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    os.mkfifo(prepared / "meta.json")
    with pytest.raises(DataError, match=r"meta.json: damaged \(a named pipe \(FIFO\), not a regular file\)"):
        load_prepared(prepared)
    (prepared / "meta.json").unlink()
    (prepared / "meta.json").write_text("[" * 100_000)
    with pytest.raises(DataError, match=r"meta.json: damaged \(nested too deeply\)"):
        load_prepared(prepared)


@pytest.mark.parametrize("text, words", [
    ("'make_divisible(64, 0)'", "divisor must be > 0"),
    ("'" + "(" * 40 + "8" + ")" * 40 + " * 2'", "nested more than"),
    ("'" + "1 + " * 300 + "1'", "characters long"),
    ("'" + "9" * 400 + " * 2'", "not a finite number of sane size"),
    ("'floor(1e300 * 1e300)'", "too large"),
    ("'" + "- " * 100 + "8 * 1'", "nested more than"),
])
def test_hostile_expressions_are_located_spec_errors(text, words):
    import cnnspec

    spec = f"name: x\nlayers:\n  - conv: {{filters: {text}}}\n  - flatten\n  - dense: num_classes\n"
    with pytest.raises(SpecError) as refused:
        cnnspec.parse_spec(spec, "x.yaml")
    assert refused.value.line == 3 and refused.value.col is not None and words in str(refused.value)


def test_an_alias_bomb_is_stopped_while_composing():
    import cnnspec

    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 12)]
    started = time.monotonic()
    with pytest.raises(SpecError, match="too large"):
        cnnspec.parse_spec("\n".join(levels) + "\nlayers: [flatten]\n", "bomb.yaml")
    assert time.monotonic() - started < 2


# ---------------------------------------------------------------- images

def test_a_real_16_bit_png_is_scaled_by_its_range_not_saturated(tmp_path):
    ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1000).astype(np.uint16)  # 0..63000
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")  # really 16 bits on disk
    pixels = read_image(path, 1)[0]
    assert np.array_equal(pixels, np.rint(ramp / 257.0).astype(np.uint8))
    assert pixels.min() == 0 and 240 < pixels.max() < 250 and len(np.unique(pixels)) == 64


def test_a_float_image_is_scaled_and_a_nan_one_refused(tmp_path):
    values = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    path = tmp_path / "float.tif"
    Image.fromarray(values, mode="F").save(path)
    assert np.array_equal(read_image(path, 1)[0], np.rint(values * 255).astype(np.uint8))
    values[0, 0] = np.nan
    Image.fromarray(values, mode="F").save(path)
    with pytest.raises(ImageReadError, match="NaN"):
        read_image(path, 1)


def test_a_pixel_bomb_is_refused_before_decoding(tmp_path):
    side = int(MAX_PIXELS ** 0.5) + 100
    path = tmp_path / "bomb.png"
    Image.new("1", (side, side)).save(path)  # a few kilobytes on disk
    with pytest.raises(ImageReadError, match="more than 50,000,000 pixels"):
        read_image(path, 1, (28, 28))


def test_a_baseline_jpeg_is_bounded_by_the_pixels_it_is_decoded_to(tmp_path, monkeypatch, capsys):
    """A phone's 50- or 108-megapixel photo, read for a small model, is decoded at an eighth
    of its sides and is no bomb; a progressive JPEG keeps coefficients for all its pixels."""
    from cnnspec.data import images
    from cnnspec.data.image_sample import sample_images

    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300)  # Pillow warns above it, refuses above twice it
    photo = Image.new("L", (400, 400), 128)
    photo.save(tmp_path / "phone.jpg")
    assert (read_image(tmp_path / "phone.jpg", 1, (28, 28)) == 128).all()
    assert capsys.readouterr().err == ""
    with pytest.raises(ImageReadError, match="phone.jpg: refused, more than 10,000 pixels"):
        read_image(tmp_path / "phone.jpg", 1, (200, 200))  # decoded at half its sides: 40,000
    photo.save(tmp_path / "progressive.jpg", progressive=True)
    with pytest.raises(ImageReadError, match="progressive.jpg: refused, more than 10,000 pixels"):
        read_image(tmp_path / "progressive.jpg", 1, (28, 28))
    # beyond Pillow's own bound (twice 90,000): a JPEG is still read reduced, and our bound
    # counts what that holds; any other file, or a JPEG read whole, stays refused
    Image.new("L", (500, 500), 77).save(tmp_path / "huge.jpg")
    assert (read_image(tmp_path / "huge.jpg", 1, (28, 28)) == 77).all()  # decoded at 63x63
    assert sample_images([str(tmp_path / "huge.jpg")]) == [(500, 500, "L")]  # preprocess's size sample
    with pytest.raises(ImageReadError, match="huge.jpg: refused, more than 10,000 pixels"):
        read_image(tmp_path / "huge.jpg", 1, (250, 250))
    Image.new("L", (500, 500)).save(tmp_path / "huge.jpg", progressive=True)
    with pytest.raises(ImageReadError, match="huge.jpg: refused, more than 10,000 pixels"):
        read_image(tmp_path / "huge.jpg", 1, (28, 28))
    Image.new("L", (500, 500)).save(tmp_path / "huge.png")
    with pytest.raises(ImageReadError, match="huge.png: refused by Pillow \\(Image size \\(250000 pixels\\)"):
        read_image(tmp_path / "huge.png", 1, (28, 28))


def test_an_image_too_elongated_to_center_crop_is_refused_before_it_is_scaled(tmp_path, monkeypatch):
    """A 20 KB PNG of 20,000,000x1 pixels, center-cropped to 28x28, was first scaled to
    28 high: 15.7 billion pixels. Here the bound is lowered so that the test allocates little."""
    from cnnspec.data import images

    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    path = tmp_path / "strip.png"
    Image.new("L", (1000, 1)).save(path)
    with pytest.raises(ImageReadError, match=r"strip.png: refused, 1000x1 pixels is too elongated to "
                                             r"center_crop to 28x28 \(scaled first, it would hold 784,000 "
                                             r"pixels, 783,216 of them cut off: more than 10,000\)$"):
        read_image(path, 1, (28, 28), "center_crop")
    assert read_image(path, 1, (28, 28), "stretch").shape == (1, 28, 28)
    assert read_image(Image.new("L", (200, 50)), 1, (28, 28), "center_crop").shape == (1, 28, 28)
    # a square image asked for at a size above the bound is not elongated: it was refused
    # as such, though stretch read it
    assert read_image(Image.new("L", (20, 20)), 1, (120, 120), "center_crop").shape == (1, 120, 120)


def tiff_with_fractional_strip_offset() -> bytes:
    """A 28x28 grayscale TIFF whose StripOffsets entry has the type RATIONAL (a fraction):
    Pillow hands the fraction to seek() and raises TypeError, not OSError (found by
    `make fuzz`)."""
    import struct

    entries = [(256, 4, 1, 28), (257, 4, 1, 28), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 5, 1, 8 + 2 + 9 * 12 + 4),  # StripOffsets as a RATIONAL stored right after the IFD
               (278, 4, 1, 28), (279, 4, 1, 28 * 28), (284, 3, 1, 1)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *entry) for entry in entries)
    rational = struct.pack("<II", 130, 1)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + rational + bytes(28 * 28)


def test_a_tiff_that_makes_pillow_raise_a_type_error_is_one_line(tmp_path):
    path = tmp_path / "strange.tif"
    path.write_bytes(tiff_with_fractional_strip_offset())
    for source in (path, path.read_bytes()):
        with pytest.raises(ImageReadError, match=r"damaged or unreadable image"):
            read_image(source, 1, (28, 28), "stretch")


def test_a_cielab_tiff_reads_as_gray_and_an_unconvertible_mode_is_one_line(tmp_path):
    # Pillow converts LAB to RGB but not straight to gray; "La" to neither.
    path = tmp_path / "lab.tif"
    Image.new("LAB", (8, 8), (50, 10, 10)).save(path)
    with Image.open(path) as image:
        expected = np.asarray(image.convert("RGB").convert("L").resize((4, 4), Image.Resampling.BILINEAR))
    assert (read_image(path, 1, (4, 4))[0] == expected).all()
    assert read_image(path, 3, (4, 4)).shape == (3, 4, 4)
    with pytest.raises(ImageReadError, match=r"<image>: its image mode La cannot be converted to gray"):
        read_image(Image.new("La", (4, 4)), 1, (4, 4))


PEAK_GROWTH = """
import sys
from cnnspec.data.images import read_image

def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

before = peak()
image = read_image(sys.argv[1], 1, (28, 28))
print(image.shape, (peak() - before) / 2**20)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_a_tall_16_bit_image_converts_to_8_bits_in_bounded_memory(tmp_path):
    # 28 x 393,244 pixels of 16 bits (11 megapixels, under the pixel bound): the conversion
    # to 8 bits once made five float64 copies of it, 300 MB (found by `make fuzz`)
    path = tmp_path / "tall.png"
    column = (np.arange(393_244, dtype=np.uint32) % 65536).astype(np.uint16)
    Image.fromarray(np.repeat(column[:, None], 28, axis=1)).save(path)
    result = subprocess.run([sys.executable, "-c", PEAK_GROWTH, str(path)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 0, result.stderr
    shape, growth = result.stdout.rsplit(" ", 1)
    assert shape == "(1, 28, 28)"
    assert float(growth) < 150, f"decoding grew the peak memory by {float(growth):.0f} MiB"


def test_a_large_jpeg_is_decoded_reduced(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    path = tmp_path / "large.jpg"
    Image.new("RGB", (2048, 2048), (200, 30, 30)).save(path)
    decoded = []
    original = JpegImagePlugin.JpegImageFile.load

    def remember(self):
        result = original(self)
        decoded.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", remember)
    array = read_image(path, 3, (32, 32))
    assert array.shape == (3, 32, 32) and decoded and max(decoded[0]) <= 256


def progressive_jpeg(repeat_last_scan: int = 0, comment: bytes = b"", trailer: bytes = b"") -> bytes:
    """A 64x64 progressive JPEG (6 scans) whose last scan, with the Huffman table before
    it, is repeated `repeat_last_scan` more times; `comment` goes into a COM segment and
    `trailer` after the end of the image (where phones put a motion photo's video)."""
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    last_scan = data.rindex(b"\xff\xc4", 0, data.rindex(b"\xff\xda"))
    com = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment if comment else b""
    return data[:2] + com + data[2:-2] + data[last_scan:-2] * repeat_last_scan + b"\xff\xd9" + trailer


@pytest.mark.parametrize("trailer", [b"", b"\0" * (2 << 20)], ids=["small", "over-1-MiB"])
def test_a_jpeg_of_endless_scans_is_refused_before_decoding(tmp_path, trailer):
    # each scan decodes the whole image again: 20,000 of them in a 2.1 MB 7000x7000 file took 72 s
    path = tmp_path / "scans.jpg"
    path.write_bytes(progressive_jpeg(repeat_last_scan=95, trailer=trailer))  # 101 scans
    for source, name in ((path, str(path)), (path.read_bytes(), "<bytes>")):
        with pytest.raises(ImageReadError) as caught:
            read_image(source, 1, (28, 28))
        assert str(caught.value) == (f"{name}: refused, a JPEG of more than 100 scans (real ones have about 10; "
                                     "each one decodes the whole image again)")
    path.write_bytes(progressive_jpeg(repeat_last_scan=94, trailer=trailer))  # 100: read
    assert read_image(path, 1).shape == (1, 64, 64)


def test_a_phones_multi_picture_jpeg_of_endless_scans_is_refused_too(tmp_path):
    """Pillow opens a JPEG that carries a multi-picture block (phones write them) as MPO:
    its first picture gets the same scan bound."""
    gray = Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64))
    buffer = io.BytesIO()
    gray.save(buffer, "MPO", save_all=True, append_images=[gray], progressive=True)
    data = buffer.getvalue()
    first_end = data.index(b"\xff\xd9")
    last_scan = data.rindex(b"\xff\xc4", 0, data.rindex(b"\xff\xda", 0, first_end))
    path = tmp_path / "phone.jpg"
    path.write_bytes(data[:first_end] + data[last_scan:first_end] * 95 + data[first_end:])  # 101 scans
    assert Image.open(path).format == "MPO"
    with pytest.raises(ImageReadError, match="refused, a JPEG of more than 100 scans"):
        read_image(path, 1, (28, 28))
    path.write_bytes(data)
    assert read_image(path, 1, (28, 28)).shape == (1, 28, 28)


def test_scan_markers_outside_the_image_data_are_not_counted(tmp_path):
    # FF DA in a comment, or in a motion photo's video after the end of the image, is no scan
    path = tmp_path / "motion.jpg"
    path.write_bytes(progressive_jpeg(comment=b"\xff\xda" * 200, trailer=b"\xff\xda\0\x08" * 300_000))
    plain = read_image(progressive_jpeg(), 1)
    assert path.stat().st_size > 1 << 20 and (read_image(path, 1) == plain).all()


def test_a_fifo_and_a_symlink_loop_among_images_are_named_and_never_block(tmp_path, fashion):
    root = tmp_path / "images"
    write_image_folder(root, fashion[0], fashion[1], ".png")
    first_class = root / class_folder_name(fashion[1][0])
    os.mkfifo(first_class / "pipe.png")
    (first_class / "loop.png").symlink_to(first_class / "loop.png")
    started = time.monotonic()
    with pytest.raises(ImageReadError) as refused:
        user_datasets.prepare_image_dataset(data_params(source=str(root)), tmp_path / "prepared",
                                            workers=1, log=lambda line: None)
    assert time.monotonic() - started < 30
    message = str(refused.value)
    assert ("named pipe (FIFO)" in message or "symlink loop" in message) and "\n" not in message
    lines = []
    meta = user_datasets.prepare_image_dataset(data_params(source=str(root), bad_images="skip"),
                                               tmp_path / "prepared", workers=1, log=lines.append)
    assert meta["skipped_images"] == 2
    assert any("named pipe (FIFO)" in line and "symlink loop" in line for line in lines)


def test_a_nul_in_a_csv_path_is_one_line(tmp_path, fashion):
    paths = write_image_folder(tmp_path / "pictures", fashion[0][:10], fashion[1][:10], ".png")
    rows = [{"path": str(p.relative_to(tmp_path)), "label": "a"} for p in paths]
    rows[3]["path"] = "pictures/x\x00y.png"
    manifest = write_csv(tmp_path / "labels.csv", rows)
    with pytest.raises(DataError) as refused:
        listing.scan_csv(manifest, {"path_column": "path", "label_column": "label"})
    assert f"{manifest}:5:" in str(refused.value) and "U+0000" in str(refused.value)


@pytest.mark.parametrize("column, value, expected", [
    ("path", "0\n0", "path holds the control character U+000A ('0\\n0'); a file name cannot"),  # with an empty label
    ("label", "bag\nboot", "label holds the control character U+000A ('bag\\nboot'); a class name cannot"),
    ("split", "train\nval", "split 'train\\nval' must be train, val or test"),
    # a C1 control (CSI), which a terminal reads as the start of an escape sequence
    ("label", "bag\x9b2J", "label holds the control character U+009B ('bag\\x9b2J'); a class name cannot"),
])
def test_a_newline_inside_a_quoted_csv_field_is_named_on_one_line(tmp_path, column, value, expected):
    # Found by `make fuzz`: a quoted path holding a newline, with no label, made a two-line error
    rows = [{"path": f"pictures/{i}.png", "label": "bag", "split": "train"} for i in range(3)]
    rows[1][column] = value
    if column == "path":
        rows[1]["label"] = ""
    manifest = write_csv(tmp_path / "labels.csv", rows)
    with pytest.raises(DataError) as refused:
        listing.scan_csv(manifest, {"path_column": "path", "label_column": "label", "split_column": "split"})
    assert str(refused.value) == f"{manifest}:3: {expected}"


def test_a_csv_line_without_an_end_is_refused_before_it_is_read_whole(tmp_path):
    # csv's field limit fired only once the whole line was in memory: a 2 GB sparse file
    # without a line break cost 4.2 GB and 9.5 s, an 8 GB one ran out of memory
    import tracemalloc

    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,label\n")
    with open(manifest, "r+b") as file:
        file.truncate(64 << 20)  # then 64 MiB of NUL bytes, sparse
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as refused:
            listing.scan_csv(manifest, {"path_column": "path", "label_column": "label"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(refused.value) == (f"{manifest}:2: a line longer than 1,048,576 characters; "
                                  "is data.source the CSV manifest?")
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB"


def test_a_csv_with_a_bom_crlf_and_a_quoted_line_break_keeps_its_line_numbers(tmp_path):
    manifest = tmp_path / "labels.csv"
    manifest.write_bytes('\ufeffpath,label,note\r\na.png,bag,"two\r\nlines"\r\nb.png,bag,plain\r\n'
                         './a.png,boot,x\r\n'.encode())
    with pytest.raises(DataError) as refused:
        listing.scan_csv(manifest, {"path_column": "path", "label_column": "label"})
    assert str(refused.value) == f"{manifest}:5: ./a.png: duplicate path, first listed on line 2"


@pytest.mark.parametrize("name", ["sac à main", "a\u00a0b", "\U0001f469\u200d\U0001f4bb", "鞋"])
def test_class_folder_names_with_any_spaces_accents_or_joined_emoji_are_text(tmp_path, fashion, name):
    root = tmp_path / "pictures"
    write_image_folder(root, fashion[0][:6], fashion[1][:6], ".png")
    (root / name).mkdir()
    Image.fromarray(fashion[0][0]).save(root / name / "0.png")
    assert name in set(listing.scan_folder(root).labels)


@pytest.mark.parametrize("name", ["bag\x1b[2J", "bag\nboot", "bag\x9b"])
def test_a_class_folder_whose_name_does_not_print_is_one_line(tmp_path, fashion, name):
    root = tmp_path / "pictures"
    write_image_folder(root, fashion[0][:6], fashion[1][:6], ".png")
    odd = root / name
    odd.mkdir()
    Image.fromarray(fashion[0][0]).save(odd / "0.png")
    with pytest.raises(DataError) as refused:
        listing.scan_folder(root)
    message = str(refused.value)
    assert message.startswith(f"{root}/{repr(name)[1:-1]}: the class folder's name holds the control character U+")
    assert message.isprintable()


def test_a_csv_row_naming_a_fifo_is_named(tmp_path, fashion):
    paths = write_image_folder(tmp_path / "pictures", fashion[0], fashion[1], ".png")
    os.mkfifo(tmp_path / "pictures" / "pipe.png")
    labels = [class_folder_name(int(label)) for label in fashion[1]]
    rows = [{"path": str(p.relative_to(tmp_path)), "label": label} for p, label in zip(paths, labels)]
    rows.append({"path": "pictures/pipe.png", "label": labels[0]})
    manifest = write_csv(tmp_path / "labels.csv", rows)
    with pytest.raises(ImageReadError, match=r"pipe\.png.*named pipe \(FIFO\)"):
        user_datasets.prepare_image_dataset(data_params(dataset="csv", source=str(manifest),
                                                        csv={"path_column": "path", "label_column": "label"}),
                                            tmp_path / "prepared", workers=1, log=lambda line: None)


def test_a_class_too_small_for_every_split_is_named_with_its_count(tmp_path, fashion, capsys):
    root = tmp_path / "images"
    write_image_folder(root, fashion[0], fashion[1], ".png")
    rare = root / "Rare"
    rare.mkdir()
    Image.fromarray(fashion[0][0]).save(rare / "only.png")
    Image.fromarray(fashion[0][1]).save(rare / "second.png")
    with pytest.raises(DataError, match=r"class 'Rare' has only 2 images, too few .*\(train 2, val 0, test 0\)"):
        user_datasets.prepare_image_dataset(data_params(source=str(root)), tmp_path / "prepared",
                                            workers=1, log=lambda line: None)
    user_datasets.prepare_image_dataset(data_params(source=str(root), bad_images="skip"),
                                        tmp_path / "prepared", workers=1, log=lambda line: None)
    assert "warning: data.source: class 'Rare' has only 2 images" in capsys.readouterr().err


# ---------------------------------------------------------------- activation memory

def test_a_network_whose_activations_pass_a_gibibyte_warns_and_strict_refuses(tmp_path):
    spec = tmp_path / "wide.yaml"
    spec.write_text("name: wide\nlayers:\n  - resize: {height: 4096, width: 4096}\n  - conv: 64\n"
                    "  - global_avg_pool\n  - dense: num_classes\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CNNSPEC_DEBUG": ""}
    warned = subprocess.run([sys.executable, "-m", "cnnspec.cli", "validate", str(spec)],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert warned.returncode == 0 and "(1 warning)" in warned.stdout
    assert f"{spec}:4:5:" in warned.stderr and "4.2 GiB of activations" in warned.stderr
    assert "conv_1 alone outputs 64x4096x4096" in warned.stderr
    refused = subprocess.run([sys.executable, "-m", "cnnspec.cli", "validate", "--strict", str(spec)],
                             capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert refused.returncode == 1 and refused.stderr.startswith("error: ") and "activations" in refused.stderr


def test_no_shipped_spec_comes_near_the_activation_bound():
    from cnnspec.models.shapes import MAX_ACTIVATION_BYTES, activation_bytes, infer

    for path in sorted((ROOT / "specs").glob("*.yaml")):
        ctx = infer(load_spec(path), None, 10)
        assert activation_bytes(ctx.records) < MAX_ACTIVATION_BYTES / 4, path.name


# ---------------------------------------------------------------- downloads

def test_a_file_url_naming_a_fifo_or_a_device_is_refused_at_once(tmp_path):
    from cnnspec.data.download import fetch

    os.mkfifo(tmp_path / "pipe")
    for source, words in ((tmp_path / "pipe", "named pipe (FIFO)"), (Path("/dev/zero"), "character device")):
        started = time.monotonic()
        with pytest.raises(DataError) as refused:
            fetch(source.as_uri(), tmp_path / "raw" / "x.gz", None, progress=False)
        assert words in str(refused.value) and "\n" not in str(refused.value)
        assert time.monotonic() - started < 5
    assert list((tmp_path / "raw").iterdir()) == []


def endless_server(announce: int | None = None):
    """An HTTP server that streams zeros for ever (optionally announcing a length)."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            if announce is not None:
                self.send_header("Content-Length", str(announce))
            self.end_headers()
            try:
                for _ in range(100_000):
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                pass
            self.close_connection = True

    from tests.fakedata import running_server
    return running_server(Handler)


@pytest.mark.parametrize("announce, words", [(None, "stopped after"), (10**12, "announces 1,000,000,000,000")])
def test_a_download_stops_at_its_size_limit(tmp_path, announce, words):
    from cnnspec.data.download import fetch

    with endless_server(announce) as base_url:
        with pytest.raises(DataError) as refused:
            fetch(f"{base_url}/x.gz", tmp_path / "x.gz", None, progress=False, max_bytes=1_000_000,
                  attempts=1, timeout=5)
    assert words in str(refused.value) and "1,000,000" in str(refused.value)
    assert list(tmp_path.iterdir()) == []


def test_a_mirror_file_far_above_the_known_size_is_refused(tmp_path):
    from cnnspec.data.download import download_dataset, size_limit

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with open(mirror / "train-images-idx3-ubyte.gz", "wb") as file:
        file.truncate(size_limit("fashion-mnist", "train-images-idx3-ubyte.gz") + 1)
    with pytest.raises(DataError, match="more than this file's size can be"):
        download_dataset("fashion-mnist", tmp_path / "raw", url=mirror.as_uri() + "/", md5="skip",
                         progress=False, log=lambda line: None)


def test_an_archive_too_large_to_extract_is_refused_before_writing(tmp_path, monkeypatch):
    import io
    import tarfile

    from cnnspec.data import archives

    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        member = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        member.size = 4 << 20
        tar.addfile(member, io.BytesIO(b"\0" * member.size))  # 4 MiB of zeros: a few KiB packed
    assert archive.stat().st_size < 50_000
    monkeypatch.setattr(archives, "MAX_EXTRACTED_BYTES", 1 << 20)
    with pytest.raises(DataError, match=r"refusing to extract 4,194,304 bytes"):
        archives.safe_extract(archive, tmp_path / "extracted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.tar.gz"]


def test_an_archive_missing_a_needed_file_is_named_and_discarded(tmp_path):
    import tarfile

    from cnnspec.data.download import download_dataset
    from tests.fakedata import make_cifar10_archive

    complete = make_cifar10_archive(tmp_path / "complete.tar.gz")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(complete) as source, tarfile.open(mirror / "cifar-10-python.tar.gz", "w:gz") as target:
        for member in source.getmembers():
            if not member.name.endswith("data_batch_3"):
                target.addfile(member, source.extractfile(member) if member.isfile() else None)
    with pytest.raises(DataError) as refused:
        download_dataset("cifar10", tmp_path / "raw", url=(mirror / "cifar-10-python.tar.gz").as_uri(),
                         md5="skip", progress=False, log=lambda line: None)
    assert "lacks data_batch_3" in str(refused.value) and "removed" in str(refused.value)
    assert not (tmp_path / "raw" / "cifar-10-python.tar.gz").exists()


# ---------------------------------------------------------------- found by the params fuzzer

@pytest.mark.parametrize("spec, words", [("fifo.yaml", "model.spec: fifo.yaml: cannot read: it is a named pipe (FIFO)"),
                                         ("\n\n", "model.spec: '\\n\\n': no such file")])
def test_model_spec_naming_a_fifo_or_holding_a_newline_is_one_line(tmp_path, spec, words):
    import yaml

    os.mkfifo(tmp_path / "fifo.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["model"]["spec"], params["recipe"] = str(tmp_path / spec) if spec == "fifo.yaml" else spec, "auto"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    with pytest.raises(ParamsError) as refused:
        load_params(tmp_path / "params.yaml", ["recipe", "model", "train", "evaluate"])
    assert words.replace("fifo.yaml", str(tmp_path / "fifo.yaml")) in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_pillow_warning_about_a_file_is_one_note_line(tmp_path, monkeypatch, capsys):
    """Pillow warns (UserWarning) about files it can still read, e.g. corrupt EXIF data:
    the warning becomes one `note:` line naming the file, once, and the image is read."""
    import warnings

    from PIL import Image as PILImage

    path = tmp_path / "exif.png"
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(path)
    real_open = PILImage.open

    def open_with_a_warning(*args, **kwargs):
        warnings.warn("Corrupt EXIF data.  Expecting to read 12 bytes but only got 2.", UserWarning, stacklevel=2)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(PILImage, "open", open_with_a_warning)
    first = read_image(path, 1, (8, 8))
    second = read_image(path, 1, (8, 8))
    assert first.shape == (1, 8, 8) and int(first.max()) == 200 and (first == second).all()
    notes = [line for line in capsys.readouterr().err.splitlines() if line]
    assert notes == [f"note: {path}: Corrupt EXIF data.  Expecting to read 12 bytes but only got 2."]


def test_a_key_holding_a_line_break_is_named_on_one_line_in_python_too(tmp_path):
    # the command line's printer escaped it, but str(error) held the line break and the
    # escape sequence, for cnnspec.build_model's callers and every message quoting it
    from cnnspec.pipeline.params import load_params
    from cnnspec.spec.reader import parse_spec

    spec = 'name: t\ninput: {channels: 1, height: 8, width: 8}\nlayers:\n  - conv: {"fil\\nters": 3}\n'
    with pytest.raises(SpecError) as spec_error:
        parse_spec(spec, "t.yaml")
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text().replace("  ema:\n", '  "e\\x1b[2Jma": 1\n  ema:\n'))
    with pytest.raises(ParamsError) as params_error:
        load_params(params)
    assert str(spec_error.value) == ("t.yaml:4:12: layers[0].conv.fil\\nters: unknown key 'fil\\nters' "
                                     "(did you mean 'filters'?)")
    assert str(params_error.value).endswith(": train.e\\x1b[2Jma: unknown key 'e\\x1b[2Jma' (did you mean 'ema'?)")


@pytest.mark.parametrize("name", ["evil\nerror: all good", "evil\r\nerror: all good", "evil\u2028error: all good",
                                  "evil\x1b[1Aerror: all good"], ids=["lf", "crlf", "u2028", "escape"])
def test_a_user_error_never_prints_a_second_line(name, capsys):
    from cnnspec.errors import exit_on_user_error

    @exit_on_user_error
    def command():
        raise DataError(f"{name}: not an image")

    with pytest.raises(SystemExit) as exited:
        command()
    printed = capsys.readouterr().err
    assert exited.value.code == 1
    assert printed.count("\n") == 1 and printed.endswith("\n")
    assert printed.startswith("error: evil\\") and printed.rstrip("\n").endswith("error: all good: not an image")
    assert all(char.isprintable() for char in printed.rstrip("\n"))
