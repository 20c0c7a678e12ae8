"""Using a trained model: `cnnspec predict`, `cnnspec.load_model` / `cnnspec.predict`, and
`cnnspec export`, on a small model trained on real Fashion-MNIST images written to files."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnspec
from cnnspec.cli import main as cli
from cnnspec.data.datasets import RawDataset, decode_raw, load_prepared, prepare, write_prepared
from cnnspec.data.images import NOT_READ, ImageReadError
from cnnspec.errors import DataError, TrainingError
from cnnspec.inference import evaluation
from cnnspec.models.checkpoint import FORMAT, save_checkpoint
from cnnspec.pipeline.params import fill_defaults, load_schema
from cnnspec.training.loop import train

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")

SPEC = """name: fashion_tiny
layers:
  - conv: {filters: 8, kernel: 3, bias: false}
  - bn
  - activation: relu
  - max_pool: 2
  - conv: {filters: 16, kernel: 3, bias: false}
  - bn
  - activation: relu
  - max_pool: 2
  - flatten
  - dropout: 0.1
  - dense: {units: num_classes}
"""


def train_params(**changes) -> dict:
    schema = {"properties": {"train": load_schema()["properties"]["train"]}}
    params = fill_defaults({"train": {"epochs": 1, "batch_size": 32}}, schema)["train"]
    params.update(device="cpu", precision="off", compile=False, channels_last=False, **changes)
    params["optimizer"].update(name="adam", lr=0.003, weight_decay=0.0)
    params["scheduler"]["name"] = "none"
    params["loss"]["label_smoothing"] = 0.0
    params["lookahead"]["enabled"] = False
    params["augment"].update(alternating_flip=False, translate=0)
    return params


def prepare_fashion(folder: Path, n_train=2000, n_test=120) -> dict:
    """The first images of Debian's Fashion-MNIST, prepared as the preprocess stage does."""
    raw = decode_raw("fashion-mnist", FASHION)
    raw = RawDataset(raw.train_images[:n_train], raw.train_labels[:n_train],
                     raw.test_images[:n_test], raw.test_labels[:n_test], raw.classes)
    arrays, meta = prepare(raw, "fashion-mnist", 0.1, 0)
    write_prepared(folder, arrays, meta)
    return load_prepared(folder)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint path, prepared folder, the prepared data) of a one-epoch model."""
    root = tmp_path_factory.mktemp("fashion")
    data = prepare_fashion(root / "prepared")
    spec = cnnspec.parse_spec(SPEC, "fashion_tiny.yaml")
    torch.manual_seed(0)
    model = cnnspec.build_model(spec, tuple(data["meta"]["input_shape"]), 10)
    result = train(model, data, train_params(), "cpu")
    save_checkpoint(root / "model.pt", result.model, spec, data["meta"], {}, 0, 0)
    return root / "model.pt", root / "prepared", data


def write_pngs(images: np.ndarray, folder: Path) -> list[Path]:
    paths = []
    for index, image in enumerate(images):
        path = folder / f"class_{index % 3}" / f"{index:03d}.png"  # nested: folders recurse
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(path)
        paths.append(path)
    return paths


def evaluate_probabilities(checkpoint, images, tta="none") -> np.ndarray:
    """What the evaluate stage computes for these images."""
    from cnnspec.models.checkpoint import load_network

    network, saved = load_network(checkpoint)
    return evaluation.predict_probabilities(network, images, saved["mean"], saved["std"], tta,
                                            batch_size=2000, device="cpu")


@needs_fashion
@pytest.mark.slow
@pytest.mark.parametrize("tta", ["none", "flip_translate"])
def test_predict_on_png_files_gives_evaluates_probabilities(trained, tmp_path, capsys, tta):
    checkpoint, _, data = trained
    images = data["test_images"][:40]
    paths = write_pngs(images, tmp_path / "images")
    expected = evaluate_probabilities(checkpoint, images, tta)
    assert (expected.argmax(1) == data["test_labels"][:40]).mean() > 0.5  # it learned something

    code = cli(["predict", str(checkpoint), str(tmp_path / "images"), "--format", "json",
                "--top-k", "10", "--batch-size", "16", "--tta", tta])
    assert code == 0
    rows = {Path(row["path"]): row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(paths)
    classes = data["meta"]["classes"]
    for index, path in enumerate(paths):
        row = rows[path]
        assert row["class"] == classes[expected[index].argmax()]
        by_class = {entry["class"]: entry["probability"] for entry in row["top_k"]}
        np.testing.assert_allclose([by_class[name] for name in classes], expected[index], atol=1e-5)


@needs_fashion
@pytest.mark.slow
def test_python_api_takes_paths_pil_numpy_and_tensors_alike(trained, tmp_path):
    checkpoint, _, data = trained
    image = data["test_images"][7]  # uint8 (1, 28, 28)
    path = write_pngs(image[None], tmp_path)[0]
    model = cnnspec.load_model(checkpoint)
    assert not model.training and model.classes == data["meta"]["classes"]
    expected = evaluate_probabilities(checkpoint, image[None])[0]
    inputs = [str(path), Image.open(path), image, image.transpose(1, 2, 0), image[0],
              torch.from_numpy(image), torch.from_numpy(image).float() / 255, path.read_bytes()]
    for prediction in cnnspec.predict(model, inputs, top_k=3):
        assert prediction.classes[0] == model.classes[expected.argmax()]
        np.testing.assert_allclose(prediction.probabilities, np.sort(expected)[::-1][:3], atol=1e-5)
    # the module itself: uint8 or float in 0..1, normalization inside, no graph to detach
    pixels = torch.from_numpy(image[None])
    np.testing.assert_allclose(model(pixels).numpy()[0], expected, atol=1e-5)
    np.testing.assert_allclose(model(pixels.float() / 255).numpy()[0], expected, atol=1e-5)
    # a gray model's (N, H, W) uint8 array is a batch of N images, as Fashion-MNIST arrays come
    for count in (2, 5):
        batch = data["test_images"][:count, 0]
        rows = cnnspec.predict(model, batch)
        assert [row.classes[0] for row in rows] == [
            model.classes[p.argmax()] for p in evaluate_probabilities(checkpoint, batch[:, None])]
    for count in (3, 4):  # as many as a colour image's channels: which is meant is asked
        asked = rf"is {count} gray images or one colour image: pass \({count}, 1, 28, 28\)"
        with pytest.raises(DataError, match=asked):
            cnnspec.predict(model, data["test_images"][:count, 0])
    with pytest.raises(DataError, match=r"got shape \(5, 28, 28\); a batch is \(N, C, H, W\)"):
        cnnspec.predict(model, [data["test_images"][:5, 0]])  # one item of five channels
    # a larger image is resized with the checkpoint's policy, like preprocess would
    big = Image.open(path).resize((56, 56))
    assert cnnspec.predict(model, big)[0].classes
    with pytest.raises(ImageReadError, match="nothing.png"):
        cnnspec.predict(model, [str(tmp_path / "nothing.png")])


@needs_fashion
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_on_real_test_images(trained, tmp_path, capsys, fmt):
    from cnnspec.inference.export import run_exported

    checkpoint, prepared, data = trained
    output = tmp_path / f"model.{fmt}"
    assert cli(["export", str(checkpoint), "--format", fmt, "--output", str(output),
                "--check-images", str(prepared)]) == 0
    said = capsys.readouterr().out
    assert f"test images of {prepared}" in said and "matches PyTorch within 0.0001" in said
    # independently: another batch size, other images, against evaluate's probabilities
    images = data["test_images"][100:107]
    got = run_exported(output, fmt, torch.from_numpy(images).float() / 255)
    np.testing.assert_allclose(got, evaluate_probabilities(checkpoint, images), atol=1e-4)


def test_unreadable_images_are_reported_in_their_rows_and_the_rest_go_on(tmp_path, capsys):
    checkpoint = random_checkpoint(tmp_path, SPEC, (1, 28, 28))
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    output = tmp_path / "out" / "predictions.csv"
    code = cli(["predict", str(checkpoint), str(tmp_path / "*.png"), "--output", str(output)])
    captured = capsys.readouterr()
    assert code == 1
    lines = output.read_text().splitlines()
    assert lines[0] == "path,class,probability,error"
    broken, good = lines[1].split(","), lines[2].split(",")
    assert broken[0].endswith("broken.png") and broken[1] == "" and "broken.png" in broken[3]
    assert good[0].endswith("good.png") and good[1] in "abcdefghij" and 0 < float(good[2]) <= 1
    assert f"error: {tmp_path / 'broken.png'}" in captured.err and captured.out == ""


def test_progress_in_a_log_is_plain_lines_on_stderr_and_stdout_is_only_the_rows(tmp_path, capsys, monkeypatch):
    # stderr redirected (a CI log): no bar, a line now and then saying how far it is
    monkeypatch.setattr("cnnspec.progress.LINE_EVERY_S", 0)
    monkeypatch.setattr("cnnspec.progress.LINE_EVERY_MAX_S", 0)  # a line at every update
    checkpoint = random_checkpoint(tmp_path, SPEC, (1, 28, 28))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(12):
        Image.fromarray(np.full((28, 28), 20 * i, np.uint8)).save(images / f"{i:02}.png")
    assert cli(["predict", str(checkpoint), str(images), "--batch-size", "4"]) == 0
    captured = capsys.readouterr()
    assert [line.split(",")[0] for line in captured.out.splitlines()[1:]] == \
        [str(images / f"{i:02}.png") for i in range(12)]
    lines = captured.err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"predicting: {n}/12 images" for n in (4, 8, 12)]
    assert all(re.search(r"\(\d+%\), [\d,.]+ images/s, about \d+ s left$", line) for line in lines), lines
    assert "\r" not in captured.err and "\x1b" not in captured.err


def test_an_image_whose_name_is_not_utf8_is_predicted_and_written_escaped(tmp_path, capsys):
    """A file name from another system's encoding (bytes that are not UTF-8) reaches Python
    as lone surrogates: the CSV written stays UTF-8, the name escaped."""
    checkpoint = random_checkpoint(tmp_path, SPEC, (1, 28, 28))
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(os.fsdecode(bytes(images) + b"/bad\xff.png"))
    output = tmp_path / "predictions.csv"
    assert cli(["predict", str(checkpoint), str(images), "--output", str(output)]) == 0
    row = output.read_bytes().decode("utf-8").splitlines()[1].split(",")
    assert row[0].endswith("bad\\udcff.png") and 0 < float(row[2]) <= 1
    capsys.readouterr()


def test_the_table_format_has_a_header_and_aligned_columns(tmp_path, capsys):
    checkpoint = random_checkpoint(tmp_path, SPEC, (1, 28, 28))
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(tmp_path / "a-long-name.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code = cli(["predict", str(checkpoint), str(tmp_path / "*.png"), "--format", "table", "--top-k", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1 and len(lines) == 3
    header = lines[0]
    good, broken = sorted(lines[1:], key=lambda line: "broken.png" in line)
    assert header.split() == ["path", "class", "probability", "class_2", "probability_2"]
    assert broken.split()[1] == "error:" and len(good.split()) == 5
    # each column starts where its heading does
    for name, cell in zip(header.split(), good.split()):
        assert header.index(name) == good.index(cell, header.index(name)), (header, good)
    assert header.index("class") == broken.index("error:")


def test_the_table_stays_aligned_for_wide_characters_and_one_line_a_row(tmp_path, capsys):
    import unicodedata

    checkpoint = random_checkpoint(tmp_path, SPEC, (1, 28, 28))
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "写真 1.png", "café.png", "new\nline.png"):
        Image.fromarray(np.full((28, 28), 200, np.uint8)).save(photos / unicodedata.normalize("NFD", name))
    (photos / "broken\n.png").write_bytes(b"not an image")
    assert cli(["predict", str(checkpoint), str(photos), "--format", "table"]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines()[0] == rf"error: {photos}/broken\n.png: {NOT_READ}"
    header, *rows = [row for row in captured.out.splitlines() if "broken" not in row]
    assert len(rows) == 4 and any(r"new\nline.png" in row for row in rows)
    for row in rows:  # the class starts in the column its heading does, on screen
        after_path = row.split(".png", 1)[1]
        before_class = row[:len(row) - len(after_path.lstrip())]
        columns = sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) == "W" else 1
                      for c in before_class)
        assert columns == header.index("class"), (row, header)


def test_a_top_k_above_the_class_count_ranks_every_class_and_says_so(tmp_path, capsys):
    checkpoint = random_checkpoint(tmp_path, SPEC, (1, 28, 28))
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(tmp_path / "a.png")
    assert cli(["predict", str(checkpoint), str(tmp_path / "a.png"), "--top-k", "11"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "note: --top-k 11: the model has 10 classes, so each row ranks all 10\n"
    assert captured.out.splitlines()[0].endswith("class_10,probability_10,error")


def test_paths_that_match_nothing_are_one_line_errors(tmp_path, capsys):
    checkpoint = random_checkpoint(tmp_path, SPEC, (1, 28, 28))
    for pattern in [str(tmp_path / "missing.png"), str(tmp_path / "*.jpg"), str(tmp_path / "empty")]:
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(SystemExit) as caught:
            cli(["predict", str(checkpoint), pattern])
        assert caught.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ")


def test_a_file_that_is_not_a_checkpoint_or_of_another_version_says_so_in_one_line(tmp_path, capsys):
    image = tmp_path / "cat.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(image)
    newer = random_checkpoint(tmp_path, SPEC, (1, 28, 28))
    saved = torch.load(newer, weights_only=True)
    torch.save(saved | {"format": "cnnspec-checkpoint/9"}, newer)
    resume = tmp_path / "state.pt"
    torch.save({"format": "cnnspec-resume/2"}, resume)
    for path, words in [(image, "not a loadable cnnspec checkpoint"), (newer, "cannot read"),
                        (resume, "resume state")]:
        with pytest.raises(SystemExit) as caught:
            cli(["predict", str(path), str(image)])
        err = capsys.readouterr().err
        assert caught.value.code == 1 and err.count("\n") == 1 and words in err and str(path) in err


def test_checkpoints_carry_the_image_settings_and_older_ones_fall_back(tmp_path):
    meta = {**META_GRAY, "image_size": [28, 28], "resize": "center_crop", "channels": 1}
    path = random_checkpoint(tmp_path, SPEC, (1, 28, 28), meta)
    model = cnnspec.load_model(path)
    assert (model.channels, model.image_size, model.resize) == (1, (28, 28), "center_crop")
    old = torch.load(path, weights_only=True)
    for key in ("image_size", "resize", "channels"):
        del old[key]  # a checkpoint written before these keys existed
    torch.save(old, path)
    model = cnnspec.load_model(path)
    assert (model.channels, model.image_size, model.resize) == (1, (28, 28), "stretch")
    assert old["format"] == FORMAT


def test_center_crop_policy_from_the_checkpoint_is_applied(tmp_path):
    """A wide image: stretch and center_crop see different pixels, predict uses the saved one."""
    meta = {**META_GRAY, "image_size": [28, 28], "resize": "center_crop", "channels": 1}
    path = random_checkpoint(tmp_path, SPEC, (1, 28, 28), meta)
    wide = np.zeros((28, 84), np.uint8)
    wide[:, 28:56] = np.arange(28, dtype=np.uint8)[None] * 9  # the centre third has a ramp
    model = cnnspec.load_model(path)
    got = cnnspec.predict(model, wide, top_k=10)[0]
    centre = torch.from_numpy(wide[None, None, :, 28:56].copy())
    expected = model(centre)[0].detach()
    assert got.probabilities == pytest.approx(sorted(expected.tolist(), reverse=True), abs=1e-6)


# ---------------------------------------------------------------- export of other specs

META_GRAY = {"classes": list("abcdefghij"), "mean": [0.3], "std": [0.35], "input_shape": [1, 28, 28]}

AUGMENTED_SPEC = """name: augmented
layers:
  - random_flip: horizontal
  - random_translation: {height: 0.1, width: 0.1}
  - random_crop: {padding: 2}
  - conv: {filters: 8, kernel: 3}
  - bn
  - activation: relu
  - spatial_dropout: 0.2
  - flatten
  - dropout: 0.5
  - dense: {units: num_classes}
"""

RESIDUAL_SPEC = """name: tiny_residual
layers:
  - conv: {filters: 8, kernel: 3}
  - residual:
      activation: relu
      body:
        - conv: {filters: 8, kernel: 3}
        - bn
        - activation: relu
        - conv: {filters: 8, kernel: 3}
        - bn
  - residual:
      body:
        - conv: {filters: 16, kernel: 3, stride: 2}
        - bn
  - global_avg_pool
  - dense: num_classes
"""
SPECS = {"simcnn": None, "residual": RESIDUAL_SPEC, "augmented": AUGMENTED_SPEC}


def random_checkpoint(folder: Path, spec_text: str, shape, meta=None, name="model.pt") -> Path:
    spec = cnnspec.parse_spec(spec_text, "spec.yaml")
    channels = shape[0]
    meta = meta or {"classes": list("abcdefghij"), "mean": [0.4] * channels,
                    "std": [0.25] * channels, "input_shape": list(shape)}
    torch.manual_seed(1)
    model = cnnspec.build_model(spec, tuple(shape), len(meta["classes"]))
    with torch.no_grad():  # batch norm statistics away from their defaults
        model.train()(torch.randn(8, *shape))
    save_checkpoint(folder / name, model.eval(), spec, meta, {}, 0, 0)
    return folder / name


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_of_plain_residual_and_augmented_specs_matches_pytorch(tmp_path, spec_name, fmt):
    from cnnspec.inference.export import export, run_exported

    text = SPECS[spec_name] or (Path(__file__).parent.parent / "specs" / "simcnn.yaml").read_text()
    checkpoint = random_checkpoint(tmp_path, text, (3, 32, 32))
    result = export(checkpoint, fmt, prepared=tmp_path / "none")
    assert "random images" in result["checked_on"] and result["difference"] <= 1e-4
    model = cnnspec.load_model(checkpoint)
    images = torch.rand(5, 3, 32, 32)
    expected = model(images).detach().numpy()
    np.testing.assert_allclose(run_exported(Path(result["output"]), fmt, images), expected, atol=1e-4)
    if spec_name == "augmented":  # eval mode: augmentation and dropout are the identity
        np.testing.assert_array_equal(model(images).detach().numpy(), expected)
        assert torch.equal(model.network.layers[:3](images), images)


def test_a_failing_check_writes_nothing(tmp_path, monkeypatch):
    from cnnspec.inference import export as export_module

    checkpoint = random_checkpoint(tmp_path, SPEC, (1, 28, 28), META_GRAY)
    # the check loads the export once and runs it batch by batch
    monkeypatch.setattr(export_module, "exported_runner", lambda path, fmt: lambda images: np.zeros((len(images), 10)))
    with pytest.raises(export_module.ExportError, match="differs from PyTorch"):
        export_module.export(checkpoint, "torchscript", tmp_path / "out.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_a_check_that_outputs_nan_on_one_image_fails(tmp_path, monkeypatch):
    from cnnspec.inference import export as export_module

    checkpoint = random_checkpoint(tmp_path, SPEC, (1, 28, 28), META_GRAY)
    real = export_module.exported_runner

    def nan_on_the_last_batch(path, fmt):
        run = real(path, fmt)
        return lambda images: run(images) * (np.nan if len(images) == 16 and images[0, 0, 0, 0] < 0 else 1)
    monkeypatch.setattr(export_module, "exported_runner", nan_on_the_last_batch)
    images = torch.rand(64, 1, 28, 28)
    images[48, 0, 0, 0] = -1.0
    monkeypatch.setattr(export_module, "check_images", lambda *args, **kwargs: (images, "64 test images"))
    with pytest.raises(export_module.ExportError, match="differs from PyTorch by nan"):
        export_module.export(checkpoint, "torchscript", tmp_path / "out.pt")


def test_the_check_says_how_far_it_is_on_stderr_in_plain_lines_in_a_log(tmp_path, capsys, monkeypatch):
    # a resnet50 at 224x224 takes most of a minute to check on a CPU: a CI log hears of it
    monkeypatch.setattr("cnnspec.progress.LINE_EVERY_S", 0)
    monkeypatch.setattr("cnnspec.progress.LINE_EVERY_MAX_S", 0)  # a line at every update
    monkeypatch.chdir(tmp_path)  # no data/prepared: 64 random images
    checkpoint = random_checkpoint(tmp_path, SPEC, (1, 28, 28), META_GRAY)
    assert cli(["export", str(checkpoint), "--format", "torchscript"]) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert [line.split(" (")[0] for line in lines] == \
        [f"checking the torchscript export: {n}/64 images" for n in (16, 32, 48, 64)]
    assert all(re.search(r"\(\d+%\), [\d,.]+ images/s, about \d+ s left$", line) for line in lines), lines
    assert "\r" not in captured.err and "\x1b" not in captured.err
    assert captured.out.startswith("wrote ") and captured.out.count("\n") == 1


def test_load_model_refuses_a_missing_file_in_one_line(tmp_path):
    with pytest.raises(TrainingError, match="no such checkpoint"):
        cnnspec.load_model(tmp_path / "missing.pt")


def test_the_optional_export_stage_writes_a_checked_onnx_file(tmp_path):
    import shutil
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parent.parent
    (tmp_path / "models").mkdir()
    random_checkpoint(tmp_path / "models", SPEC, (1, 28, 28), META_GRAY)
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    result = subprocess.run([sys.executable, str(root / "stages" / "export.py")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "wrote models/export/model.onnx" in result.stdout and "random images" in result.stdout
    assert (tmp_path / "models" / "export" / "model.onnx").stat().st_size > 1000
    # off the default `dvc repro`: its own dvc.yaml, run from the repository root
    stage = yaml.safe_load((root / "export" / "dvc.yaml").read_text())["stages"]["export"]
    assert stage["wdir"] == ".." and stage["outs"] == [{"models/export": {"cache": False}}]
    assert "models/model.pt" in stage["deps"]
    assert "export" not in yaml.safe_load((root / "dvc.yaml").read_text())["stages"]


@pytest.mark.slow
def test_a_backbone_checkpoint_loads_offline_from_the_file_alone(tmp_path, monkeypatch):
    from cnnspec.layers import backbone

    spec = cnnspec.parse_spec("name: transfer\nlayers:\n  - backbone: {model: resnet18, weights: imagenet, "
                              "trainable: false, pooling: avg}\n  - dense: num_classes\n", "transfer.yaml")
    torch.manual_seed(0)
    model = cnnspec.build_model(spec, (3, 32, 32), 10, load_weights=False).eval()
    save_checkpoint(tmp_path / "model.pt", model, spec, {**META_GRAY, "mean": [0.5] * 3, "std": [0.25] * 3,
                                                         "input_shape": [3, 32, 32]}, {}, 0, 0)

    def no_download(*args):
        raise AssertionError("loading a checkpoint fetched ImageNet weights")

    monkeypatch.setattr(backbone, "imagenet_state_dict", no_download)
    loaded = cnnspec.load_model(tmp_path / "model.pt")
    images = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        np.testing.assert_allclose(loaded(images).numpy(), model(loaded.normalize(images)).softmax(1).numpy(),
                                   atol=1e-6)


def test_predict_reads_folder_dataset_files_exactly_as_preprocess_did(tmp_path, capsys):
    """Mixed formats, modes and sizes, resized by center_crop: predict on the source files
    of the test split gives evaluate's probabilities on the prepared arrays."""
    from cnnspec.data import user_datasets as imagesets
    from cnnspec.pipeline.params import load_params
    from tests.imagefiles import write_colour_set

    root = tmp_path / "images"
    write_colour_set(root, per_class=10)
    data = load_params(Path(__file__).parent.parent / "params.yaml", ["data"])["data"]
    data.update(dataset="folder", source=str(root), image_size=[16, 20], channels=3,
                resize="center_crop", val_split=0.1, test_split=0.3)
    meta = imagesets.prepare_image_dataset(data, tmp_path / "prepared", workers=1, log=lambda line: None)
    prepared = load_prepared(tmp_path / "prepared")
    listing = imagesets.scan(data)
    _, splits = imagesets.assign_splits(listing, data["val_split"], data["test_split"], data["seed"])
    test_paths = [listing.paths[i] for i in splits["test"][0]]
    assert len(test_paths) == len(prepared["test_labels"]) >= 4

    checkpoint = random_checkpoint(tmp_path, SPEC.replace("max_pool: 2\n  - flatten", "global_avg_pool"),
                                   (3, 16, 20), meta)
    assert cnnspec.load_model(checkpoint).resize == "center_crop"
    expected = evaluate_probabilities(checkpoint, prepared["test_images"])
    assert cli(["predict", str(checkpoint), *test_paths, "--format", "json", "--top-k", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["path"] for row in rows] == test_paths
    for row, probabilities in zip(rows, expected):
        assert row["class"] == meta["classes"][probabilities.argmax()]
        by_class = {entry["class"]: entry["probability"] for entry in row["top_k"]}
        np.testing.assert_allclose([by_class[name] for name in meta["classes"]], probabilities, atol=1e-5)
