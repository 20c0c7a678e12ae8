"""Exports carry their metadata (class names, image size, channels, normalization, resize
policy) and `cnnspec predict` runs an exported ONNX file on its own, with the same
preprocessing as the checkpoint it came from."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import cnnspec
from cnnspec.cli import main as cli
from cnnspec.data.datasets import load_prepared
from cnnspec.inference.metadata import ExportError, parsed_settings, read_metadata
from cnnspec.models.checkpoint import save_checkpoint
from cnnspec.pipeline.params import fill_defaults, load_schema
from cnnspec.training.loop import train
from cnnspec.version import cnnspec_version
from tests.fashion import FASHION, write_subset

pytestmark = pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")

SPEC = """name: export_tiny
layers:
  - conv: {filters: 8, kernel: 3, bias: false}
  - bn
  - activation: relu
  - max_pool: 2
  - flatten
  - dense: {units: num_classes}
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = load_prepared(write_subset(root / "prepared", n_train=600, n_val=50, n_test=60))
    schema = {"properties": {"train": load_schema()["properties"]["train"]}}
    options = fill_defaults({"train": {"epochs": 1, "batch_size": 32}}, schema)["train"]
    options.update(device="cpu", precision="off", compile=False, channels_last=False)
    options["optimizer"].update(name="adam", lr=0.003)
    options["scheduler"]["name"] = "none"
    spec = cnnspec.parse_spec(SPEC, "export_tiny.yaml")
    torch.manual_seed(0)
    model = cnnspec.build_model(spec, tuple(data["meta"]["input_shape"]), 10)
    result = train(model, data, options, "cpu")
    save_checkpoint(root / "model.pt", result.model, spec, data["meta"], {}, 0, 0)
    return root / "model.pt", root / "prepared", data


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exports_carry_class_names_and_image_settings(checkpoint, tmp_path, fmt):
    path, prepared, data = checkpoint
    output = tmp_path / ("model.onnx" if fmt == "onnx" else "model.torchscript.pt")
    assert cli(["export", str(path), "--format", fmt, "--output", str(output),
                "--check-images", str(prepared)]) == 0
    settings = read_metadata(output)
    meta = data["meta"]
    assert settings["classes"] == meta["classes"] and settings["classes"][0] == "T-shirt/top"
    assert settings["image_size"] == [28, 28] and settings["channels"] == 1
    assert settings["resize"] == "stretch"
    assert settings["mean"] == pytest.approx(meta["mean"]) and settings["std"] == pytest.approx(meta["std"])
    if fmt == "onnx":  # readable by any ONNX tool, not only cnnspec
        import onnx

        props = {entry.key: entry.value for entry in onnx.load(str(output)).metadata_props}
        assert json.loads(props["cnnspec.classes"]) == meta["classes"]
        assert props["cnnspec.version"] == cnnspec_version()


def test_predict_runs_an_onnx_file_like_its_checkpoint(checkpoint, tmp_path, capsys):
    path, prepared, data = checkpoint
    onnx_path = tmp_path / "deploy" / "model.onnx"
    assert cli(["export", str(path), "--format", "onnx", "--output", str(onnx_path),
                "--check-images", str(prepared)]) == 0
    folder = tmp_path / "images"
    folder.mkdir()
    for index, image in enumerate(data["test_images"][:12]):
        # larger than the model's input: both must resize with the checkpoint's policy
        Image.fromarray(image[0]).resize((40, 40)).save(folder / f"{index:02d}.png")
    capsys.readouterr()
    assert cli(["predict", str(path), str(folder), "--format", "json", "--top-k", "10"]) == 0
    from_checkpoint = json.loads(capsys.readouterr().out)
    assert cli(["predict", str(onnx_path), str(folder), "--format", "json", "--top-k", "10"]) == 0
    from_onnx = json.loads(capsys.readouterr().out)
    assert [row["path"] for row in from_onnx] == [row["path"] for row in from_checkpoint]
    for ours, theirs in zip(from_onnx, from_checkpoint):
        assert ours["class"] == theirs["class"]
        got = {entry["class"]: entry["probability"] for entry in ours["top_k"]}
        want = {entry["class"]: entry["probability"] for entry in theirs["top_k"]}
        assert got == pytest.approx(want, abs=1e-4)
    labels = data["test_labels"][:12]
    accuracy = np.mean([data["meta"]["classes"][label] == row["class"] for label, row in zip(labels, from_onnx)])
    assert accuracy > 0.3  # it learned something: chance is 0.1


def test_an_onnx_file_without_metadata_or_with_tta_is_refused_in_one_line(checkpoint, tmp_path, capsys):
    path, _, data = checkpoint
    bare = tmp_path / "bare.onnx"
    model = cnnspec.load_model(path)
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(bare), dynamo=False,
                      input_names=["images"], output_names=["probabilities"])
    image = tmp_path / "one.png"
    Image.fromarray(data["test_images"][0][0]).save(image)
    capsys.readouterr()
    for arguments, code, words in [([], 1, "bare.onnx: no cnnspec metadata"),
                                   (["--tta", "flip"], 2, "--tta: an ONNX model runs as exported")]:
        with pytest.raises(SystemExit) as caught:
            cli(["predict", str(bare), str(image), *arguments])
        error = capsys.readouterr().err
        assert caught.value.code == code and error.count("\n") == 1 and words in error, error


def test_metadata_without_a_key_this_cnnspec_needs_names_the_key_and_the_version():
    """An export by another cnnspec version, whose metadata lacks a key this one reads."""
    props = {"classes": '["a", "b"]', "image_size": "[8, 8]", "channels": "3", "resize": "stretch"}
    assert parsed_settings("m.onnx", props)["image_size"] == [8, 8]  # mean, std and version are optional
    for version, words in [(None, "perhaps exported by another cnnspec version"),
                           ("0.3.0", "exported by cnnspec 0.3.0")]:
        older = {key: value for key, value in props.items() if key != "resize"}
        older.update({"version": version} if version else {})
        with pytest.raises(ExportError) as caught:
            parsed_settings("m.onnx", older)
        assert str(caught.value) == (f"m.onnx: its cnnspec metadata has no resize ({words}; this is cnnspec "
                                     f"{cnnspec_version()}); export it again from its checkpoint with this "
                                     f"cnnspec (cnnspec export)")


def photos_as_people_have_them(folder, image) -> list:
    """One gray image as a sideways phone JPEG, a large JPEG, a transparent PNG, a palette
    PNG, a 16-bit PNG, a CMYK JPEG and a GIF."""
    gray = Image.fromarray(image)
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers turn it 90 degrees clockwise
    gray.resize((60, 45)).rotate(90, expand=True).save(folder / "phone.jpg", exif=exif.tobytes())
    gray.convert("RGB").resize((400, 300)).save(folder / "large.jpg")
    rgba = np.stack([image] * 3 + [np.where(image > 40, 255, 0).astype(np.uint8)], axis=-1)
    Image.fromarray(rgba).save(folder / "alpha.png")
    gray.convert("RGB").quantize(16).save(folder / "palette.png")
    Image.fromarray(image.astype(np.uint16) * 257 + 3).save(folder / "gray16.png")
    gray.convert("CMYK").save(folder / "cmyk.jpg")
    gray.resize((30, 50)).save(folder / "tall.gif")
    return sorted(folder.iterdir())


def test_the_docs_plain_python_for_an_onnx_file_reads_images_as_cnnspec_does(checkpoint, tmp_path, capsys):
    """docs/export.md's block for a deployer without cnnspec: its pixels are read_image's,
    whatever the file, and its probabilities cnnspec predict's."""
    import re
    from pathlib import Path

    from cnnspec.data.images import read_image

    path, prepared, data = checkpoint
    onnx_path = tmp_path / "model.onnx"
    assert cli(["export", str(path), "--format", "onnx", "--output", str(onnx_path),
                "--check-images", str(prepared)]) == 0
    (tmp_path / "photos").mkdir()
    photos = photos_as_people_have_them(tmp_path / "photos", data["test_images"][0][0])
    text = (Path(__file__).resolve().parent.parent / "docs" / "export.md").read_text(encoding="utf-8")
    block = re.search(r"## Using the ONNX file.*?```python\n(.*?)```", text, re.S).group(1)
    code = block.replace('"models/model.onnx"', repr(str(onnx_path))).replace('"cat.jpg"', repr(str(photos[0])))
    namespace = {}
    capsys.readouterr()
    exec(compile(code, "docs/export.md", "exec"), namespace)
    printed = capsys.readouterr().out.strip().rsplit(" ", 1)  # a class name may hold spaces
    assert cli(["predict", str(onnx_path), str(photos[0]), "--format", "json"]) == 0
    predicted = json.loads(capsys.readouterr().out)[0]
    assert printed[0] == predicted["class"] and float(printed[1]) == pytest.approx(predicted["probability"], abs=1e-6)
    for channels, resize, size in [(1, "stretch", (28, 28)), (3, "center_crop", (20, 36)), (3, "stretch", (32, 32))]:
        namespace.update(channels=channels, resize=resize, height=size[0], width=size[1])
        for photo in photos:
            assert np.array_equal(namespace["pixels"](photo), read_image(photo, channels, size, resize)), photo
