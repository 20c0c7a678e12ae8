"""A checkpoint is data: opening one never imports a module or runs its pickle's code,
and a damaged one is named as damaged (its weights are checked against a stored sha256)."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnspec
from cnnspec.errors import ParamsError, TrainingError
from cnnspec.models.checkpoint import DIGEST_KEY, FORMAT, load_network, read_checkpoint, save_checkpoint
from cnnspec.spec.plugins import PluginError
from tests.imagefiles import fashion_subset

ROOT = Path(__file__).resolve().parents[1]
SPEC = "name: tiny\nlayers:\n  - conv: {filters: 4}\n  - global_avg_pool\n  - dense: num_classes\n"
PLUGIN_SPEC = ("name: moved\nlayers:\n  - conv: 4\n  - space_to_depth: 2\n"
               "  - global_avg_pool\n  - dense: num_classes\n")
META = {"classes": [str(i) for i in range(10)], "mean": [0.3], "std": [0.35], "input_shape": [1, 28, 28]}


def run(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CNNSPEC_DEBUG": ""}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def tiny_checkpoint(path: Path, params=None) -> Path:
    spec = cnnspec.parse_spec(SPEC, "tiny.yaml")
    torch.manual_seed(0)
    model = cnnspec.build_model(spec, (1, 28, 28), 10).eval()
    save_checkpoint(path, model, spec, META, params or {}, epoch=0, best_epoch=0)
    return path


def fashion_pngs(folder: Path, count: int = 3) -> list[Path]:
    images, _, _, _ = fashion_subset(count, 1)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        paths.append(folder / f"image_{index}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


@pytest.fixture
def plugin_checkpoint(tmp_path):
    """A checkpoint whose stored params name a plugin that leaves a marker when imported."""
    marker = tmp_path / "plugin_was_imported"
    plugin = tmp_path / "space_to_depth_plugin.py"
    plugin.write_text(f"open({str(marker)!r}, 'w').close()\n"
                      + (ROOT / "examples" / "space_to_depth.py").read_text(encoding="utf-8"))
    checkpoint = tmp_path / "model.pt"
    made = run("-c", "import sys, torch, cnnspec\n"
                     "from cnnspec.models.checkpoint import save_checkpoint\n"
                     "cnnspec.load_plugins([sys.argv[1]])\n"
                     f"spec = cnnspec.parse_spec({PLUGIN_SPEC!r}, 'moved.yaml')\n"
                     "model = cnnspec.build_model(spec, (1, 28, 28), 10).eval()\n"
                     f"save_checkpoint(sys.argv[2], model, spec, {META!r}, "
                     "{'model': {'plugins': [sys.argv[1]]}}, 0, 0)\n", str(plugin), str(checkpoint))
    assert made.returncode == 0, made.stderr
    marker.unlink()
    return checkpoint, plugin, marker


def test_loading_a_plugin_naming_checkpoint_imports_nothing_and_names_the_type(plugin_checkpoint):
    checkpoint, plugin, marker = plugin_checkpoint
    with pytest.raises(PluginError) as refused:
        load_network(checkpoint)
    message = str(refused.value)
    assert not marker.exists()  # the plugin the checkpoint names was not imported
    assert "\n" not in message and "space_to_depth" in message and "--plugin" in message
    assert str(plugin) in message  # what it was trained with, so the user can judge it


def test_cnnspec_predict_refuses_in_one_line_then_runs_with_plugin(plugin_checkpoint, tmp_path):
    checkpoint, plugin, marker = plugin_checkpoint
    images = fashion_pngs(tmp_path / "photos")
    refused = run("-m", "cnnspec.cli", "predict", str(checkpoint), *map(str, images))
    assert refused.returncode == 2 and not marker.exists()
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert "space_to_depth" in refused.stderr and "--plugin" in refused.stderr
    done = run("-m", "cnnspec.cli", "predict", "--plugin", str(plugin), str(checkpoint), *map(str, images))
    assert done.returncode == 0, done.stderr
    assert marker.exists()  # the user named the plugin: now, and only now, it runs
    assert len(done.stdout.strip().splitlines()) == 1 + len(images)


def test_cnnspec_export_refuses_a_plugin_naming_checkpoint_without_importing(plugin_checkpoint, tmp_path):
    checkpoint, _, marker = plugin_checkpoint
    refused = run("-m", "cnnspec.cli", "export", str(checkpoint), "--format", "torchscript",
                  "--output", str(tmp_path / "model.ts.pt"))
    assert refused.returncode == 2 and not marker.exists()
    assert "space_to_depth" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "model.ts.pt").exists()


def test_a_real_malicious_pickle_is_refused_by_predict_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class RunsACommand:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    images = fashion_pngs(tmp_path / "photos", 1)
    # inside torch.save's zip archive: torch.load(weights_only=True) refuses the pickle
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "state_dict": RunsACommand()}, evil)
    refused = run("-m", "cnnspec.cli", "predict", str(evil), str(images[0]))
    assert refused.returncode == 1 and not marker.exists()
    assert refused.stderr.count("\n") == 1 and "weights_only" in refused.stderr
    # a bare pickle is not what torch.save writes: refused before anything reads it
    evil.write_bytes(pickle.dumps({"format": FORMAT, "state_dict": RunsACommand()}))
    refused = run("-m", "cnnspec.cli", "predict", str(evil), str(images[0]))
    assert refused.returncode == 1 and not marker.exists()
    assert refused.stderr.count("\n") == 1 and "torch.save writes a zip archive" in refused.stderr


def flip_a_weight_byte(path: Path) -> None:
    """Flip one bit inside the largest tensor record of torch.save's zip, in place: what
    a bad disk or a bad copy does. The zip stays readable."""
    with zipfile.ZipFile(path) as archive:
        record = max((info for info in archive.infolist() if "/data/" in info.filename),
                     key=lambda info: info.file_size)
    with open(path, "r+b") as file:
        file.seek(record.header_offset + 26)
        name_length, extra_length = np.frombuffer(file.read(4), dtype="<u2")
        middle = record.header_offset + 30 + int(name_length) + int(extra_length) + record.file_size // 2
        file.seek(middle)
        byte = file.read(1)[0]
        file.seek(middle)
        file.write(bytes([byte ^ 0x10]))


def test_a_flipped_bit_in_the_weights_is_named_as_damage(tmp_path):
    path = tiny_checkpoint(tmp_path / "model.pt")
    assert len(read_checkpoint(path)[DIGEST_KEY]) == 64
    flip_a_weight_byte(path)
    with pytest.raises(TrainingError) as damaged:
        load_network(path)
    assert "damaged" in str(damaged.value) and "sha256" in str(damaged.value)
    assert "\n" not in str(damaged.value)


def test_an_older_checkpoint_without_a_digest_still_loads(tmp_path):
    path = tiny_checkpoint(tmp_path / "model.pt")
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint[DIGEST_KEY]
    torch.save(checkpoint, path)
    model, loaded = load_network(path)
    assert DIGEST_KEY not in loaded and model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.parametrize("change, words", [
    (lambda c: c.update(state_dict=[1, 2]), "state_dict"),
    (lambda c: c.update(classes=[]), "classes"),
    (lambda c: c.update(input_shape=[1, 28]), "input_shape"),
    (lambda c: c.update(mean="x"), "mean"),
    (lambda c: c.update(std=[0.0]), "std"),
    (lambda c: c.pop("spec_text"), "spec_text"),
    (lambda c: c.update(image_size=["a", None]), "image_size"),
    # tensors where plain values belong (found by the checkpoint fuzzer: they escaped as
    # "Boolean value of Tensor with more than one value is ambiguous")
    (lambda c: c.update(format=torch.zeros(2)), "not a cnnspec checkpoint"),
    (lambda c: c.update(num_classes=torch.zeros(2)), "num_classes"),
    (lambda c: c.update(image_size=torch.zeros(2)), "image_size"),
    (lambda c: c.update(channels=torch.ones(2)), "channels"),
    # fields the weights' digest does not cover: bounded, and checked against input_shape
    (lambda c: c.update(image_size=[40000, 40000]), "image_size [40000, 40000] is not the height and width"),
    (lambda c: c.update(input_shape=[1, 20000, 20000]), "input_shape [1, 20000, 20000] is not"),
    (lambda c: c.update(resize="bogus"), "resize is not one of stretch, center_crop"),
    (lambda c: c.update(channels=3), "channels 3 is not the channels of input_shape [1, 28, 28]"),
    (lambda c: c.update(mean=[float("nan")]), "mean is not one finite number per channel"),
    # class names are printed by predict's table and CSV: escape sequences and line breaks fake rows
    (lambda c: c.update(classes=["\x1b[2J\x1b[31mPWNED"] + [str(i) for i in range(9)]),
     "class name '\\x1b[2J\\x1b[31mPWNED' holds a control character or line break"),
    (lambda c: c.update(classes=["line\nimg9.png  fake  1.0000"] * 10), "holds a control character or line break"),
])
def test_a_checkpoint_with_malformed_fields_is_one_line(tmp_path, change, words):
    path = tiny_checkpoint(tmp_path / "model.pt")
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, path)
    with pytest.raises(TrainingError) as refused:
        load_network(path)
    assert words in str(refused.value) and "\n" not in str(refused.value)


# ---------------------------------------------------------------- torch files handed over

def rezipped(source: Path, destination: Path) -> Path:
    """`source` (torch.save's zip) with every entry DEFLATE-compressed: torch.load still
    reads it, and a few megabytes of such a file can unpack to gigabytes."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            new.writestr(info.filename, old.read(info))
    return destination


def test_a_compressed_torch_file_is_refused_by_every_reader_before_torch_load(tmp_path, monkeypatch, capsys):
    from cnnspec.models.weights import read_state_dict
    from cnnspec.training.finetune import pretrained_state
    from cnnspec.training.loop import RESUME_FORMAT, read_resume_state

    bomb = rezipped(tiny_checkpoint(tmp_path / "model.pt"), tmp_path / "bomb.pt")
    torch.save({"format": RESUME_FORMAT, "fingerprint": "f"}, tmp_path / "plain_state.pt")
    state = rezipped(tmp_path / "plain_state.pt", tmp_path / "state.pt")

    def must_not_run(*args, **kwargs):
        raise AssertionError("torch.load was given a compressed archive")

    monkeypatch.setattr(torch, "load", must_not_run)
    with pytest.raises(TrainingError) as refused:
        read_checkpoint(bomb)
    message = str(refused.value)
    assert message.startswith(f"{bomb}: not a loadable cnnspec checkpoint (its zip entry ")
    assert "is compressed" in message and "\n" not in message
    with pytest.raises(ValueError, match="is compressed"):
        read_state_dict(bomb)
    with pytest.raises(ParamsError, match=f"model.weights: {bomb}: cannot be read as weights .*is compressed"):
        pretrained_state(str(bomb), "model.weights")
    assert read_resume_state(state, "f") is None
    assert "is compressed" in capsys.readouterr().err and (tmp_path / "state.pt.damaged").exists()


def test_a_zip_that_unpacks_beyond_its_size_or_lists_too_many_entries_is_refused(tmp_path, monkeypatch):
    from cnnspec import torch_files

    path = tiny_checkpoint(tmp_path / "model.pt")
    data = bytearray(path.read_bytes())
    entry = data.rfind(b"PK\x01\x02")  # the last entry of the zip's directory: its unpacked size
    data[entry + 24:entry + 28] = (2**32 - 1).to_bytes(4, "little")
    (tmp_path / "big.pt").write_bytes(bytes(data))
    with pytest.raises(TrainingError, match=r"its zip entries unpack to [\d,]+ bytes, more than the file's"):
        read_checkpoint(tmp_path / "big.pt")
    monkeypatch.setattr(torch_files, "MAX_ZIP_ENTRIES", 3)
    with pytest.raises(TrainingError, match=r"its zip archive holds \d+ entries \(at most 3\)"):
        read_checkpoint(path)
    monkeypatch.setattr(torch_files, "MAX_ZIP_DIRECTORY_BYTES", 100)
    with pytest.raises(TrainingError, match=r"its zip directory takes [\d,]+ bytes"):
        read_checkpoint(path)


def test_a_checkpoint_that_is_a_fifo_a_device_or_a_symlink_loop_says_what_it_is(tmp_path):
    os.mkfifo(tmp_path / "fifo.pt")  # nobody writes: opening it would block for ever
    (tmp_path / "zero.pt").symlink_to("/dev/zero")
    (tmp_path / "a.pt").symlink_to(tmp_path / "b.pt")
    (tmp_path / "b.pt").symlink_to(tmp_path / "a.pt")
    for name, kind in [("fifo.pt", "a named pipe (FIFO)"), ("zero.pt", "a character device"),
                       ("a.pt", "a symlink loop")]:
        with pytest.raises(TrainingError) as refused:
            read_checkpoint(tmp_path / name)
        assert str(refused.value) == f"{tmp_path / name}: cannot read the checkpoint: it is {kind}, not a regular file"


def test_predict_refuses_nan_weights_under_a_matching_digest_in_one_line(tmp_path, capsys):
    from cnnspec.cli import main as cli
    from cnnspec.models.checkpoint import weights_digest

    path = tiny_checkpoint(tmp_path / "model.pt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"]["layers.conv_1.weight"].fill_(float("nan"))
    checkpoint[DIGEST_KEY] = weights_digest(checkpoint["state_dict"])  # what an editor would do
    torch.save(checkpoint, path)
    image = fashion_pngs(tmp_path / "photos", 1)[0]
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:
        cli(["predict", str(path), str(image), "--format", "json"])
    out, err = capsys.readouterr()
    assert caught.value.code == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"error: {path}: the weights hold NaN or infinity (layers.conv_1.weight)")
    with pytest.raises(SystemExit):
        cli(["export", str(path), "--format", "onnx", "--output", str(tmp_path / "model.onnx")])
    assert not (tmp_path / "model.onnx").exists()


def test_predict_refuses_probabilities_that_are_not_finite(tmp_path):
    model = cnnspec.load_model(tiny_checkpoint(tmp_path / "model.pt"))
    with torch.no_grad():  # finite weights whose outputs overflow
        model.network.layers[-1].weight.fill_(3e38)
    with pytest.raises(TrainingError, match="the model outputs NaN or infinity for 1 images"):
        cnnspec.predict(model, np.full((1, 28, 28), 255, dtype=np.uint8), engine="torch")


def state_dict_file(path: Path, state) -> Path:
    torch.save(state, path)
    return path


def test_weights_with_names_that_are_not_text_or_a_pickle_that_runs_code_are_one_line(tmp_path):
    from cnnspec.training.finetune import pretrained_state

    marker = tmp_path / "pwned"

    class RunsACommand:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    numbered = state_dict_file(tmp_path / "numbered.pt", {1: torch.zeros(2), 2: torch.zeros(3)})
    with pytest.raises(ParamsError) as refused:
        pretrained_state(str(numbered), "model.weights")
    assert "its key 1 is a int, not a tensor's name" in str(refused.value)
    evil = state_dict_file(tmp_path / "evil.pt", {"weight": RunsACommand()})
    with pytest.raises(ParamsError) as refused:
        pretrained_state(str(evil), "model.weights")
    message = str(refused.value)
    assert not marker.exists() and "\n" not in message
    assert "asks to run code" in message and "weights_only set to False" not in message
    assert "arbitrary code execution" not in message


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tamper", ["expanded", "one_storage_many_names"])
def test_tensors_that_claim_more_than_the_file_holds_are_refused_by_every_reader(tmp_path, tamper):
    """A 4 KB file whose extra tensor is zeros(1) expanded to 1,000,000 x 1,000,000 (stride
    0), or one tensor stored once and named 5,000 times: the digest and the NaN check would
    allocate 4 TB or run for minutes on them."""
    from cnnspec.models.weights import read_state_dict
    from cnnspec.training.loop import read_resume_state

    checkpoint = torch.load(tiny_checkpoint(tmp_path / "model.pt"), weights_only=True)
    checkpoint.pop(DIGEST_KEY)  # older checkpoints have none, so a file may leave it out
    if tamper == "expanded":
        checkpoint["state_dict"]["ghost"] = torch.zeros(1).expand(1_000_000, 1_000_000)
    else:
        shared = torch.zeros(256, 1024)
        checkpoint["state_dict"].update({f"copy_{index}": shared for index in range(5_000)})
    hostile = tmp_path / "hostile.pt"
    torch.save(checkpoint, hostile)
    with pytest.raises(TrainingError, match=r"hostile.pt: not a loadable cnnspec checkpoint \(its tensors claim "
                                            r"more than the file's [\d,]+ bytes"):
        read_checkpoint(hostile)
    with pytest.raises(ValueError, match="its tensors claim more than the file's"):
        read_state_dict(hostile)
    assert read_resume_state(hostile, "any") is None and not hostile.exists()  # set aside as damaged


def test_the_checkpoint_knows_the_resize_policies_images_are_read_with():
    from cnnspec.data.images import RESIZE_POLICIES
    from cnnspec.models import checkpoint

    assert checkpoint.RESIZE_POLICIES == RESIZE_POLICIES


def test_an_imagenet_file_placed_by_hand_is_screened_like_any_torch_file(tmp_path, monkeypatch):
    """The backbone's weights file is one a user copies from somewhere when offline: a
    compressed zip entry (a bomb's shape) is refused before torch.load, in one line."""
    import zipfile

    from cnnspec.errors import DataError
    from cnnspec.layers import backbone

    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save({"fc.bias": torch.zeros(3)}, path)
    with zipfile.ZipFile(path) as stored, zipfile.ZipFile(tmp_path / "packed.pth", "w", zipfile.ZIP_DEFLATED) as packed:
        for item in stored.infolist():
            packed.writestr(item.filename, stored.read(item.filename))
    (tmp_path / "packed.pth").replace(path)
    monkeypatch.setattr(backbone, "imagenet_file", lambda name: (str(path), "https://example.org/r.pth"))
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: pytest.fail("torch.load was reached"))

    class Node:
        name, where = "backbone_1", None

    with pytest.raises(DataError, match=r"^backbone_1: .*resnet18-f37072fd.pth: cannot be read as the ImageNet "
                                        r"weights of resnet18 \(its zip entry .*data.pkl is compressed"):
        backbone.imagenet_state_dict(Node(), "resnet18")
