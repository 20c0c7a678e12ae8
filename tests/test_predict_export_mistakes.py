"""What a user gets wrong or is handed when predicting and exporting: output paths that
cannot be written, a TorchScript or ONNX file where a checkpoint is expected, ONNX
metadata that does not fit its graph, export options out of range, the same image named
twice, arrays of the wrong kind. Each is one line naming what and where, before any work."""
import errno
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnspec
from cnnspec import atomic
from cnnspec.cli import main as cli
from cnnspec.errors import DataError, DiskFullError, OutputError, TrainingError
from cnnspec.inference import image_paths, onnx_model
from cnnspec.inference import predict as predict_module
from cnnspec.models.checkpoint import read_checkpoint
from tests.test_predict import SPEC, random_checkpoint


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A checkpoint of 10 classes for 28x28 grey images, its ONNX and TorchScript exports
    and three PNGs."""
    folder = tmp_path_factory.mktemp("mistakes")
    checkpoint = random_checkpoint(folder, SPEC, (1, 28, 28))
    assert cli(["export", str(checkpoint), "--format", "onnx", "--output", str(folder / "model.onnx")]) == 0
    assert cli(["export", str(checkpoint), "--format", "torchscript"]) == 0
    photos = folder / "photos"
    photos.mkdir()
    generator = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(generator.integers(0, 256, (28, 28), dtype=np.uint8)).save(photos / f"{index}.png")
    return {"checkpoint": checkpoint, "onnx": folder / "model.onnx",
            "torchscript": folder / "model.torchscript.pt", "photos": photos}


def one_line_error(capsys, arguments, code):
    with pytest.raises(SystemExit) as caught:
        cli(arguments)
    error = capsys.readouterr().err
    assert caught.value.code == code, error
    assert error.count("\n") == 1 and error.startswith("error: ") and "Traceback" not in error, error
    return error


# --- where the output goes ---------------------------------------------------------------

def test_predict_refuses_an_output_it_cannot_write_before_reading_any_image(model_files, tmp_path, capsys,
                                                                             monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("images were classified before the output path was checked")

    monkeypatch.setattr(predict_module, "predict_files", must_not_run)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for output, words in [(tmp_path, "is a folder; give a file name"),
                          (a_file / "out.csv", f"{a_file} is a file, not a folder")]:
        error = one_line_error(capsys, ["predict", str(model_files["checkpoint"]), str(model_files["photos"]),
                                        "--output", str(output)], 1)
        assert f"{output}: {words}" in error
    assert a_file.read_text() == "mine"


def test_a_folder_that_cannot_be_written_is_named_not_reported_as_a_full_disk(tmp_path, monkeypatch):
    destination = tmp_path / "out" / "predictions.csv"
    monkeypatch.setattr(atomic.os, "access", lambda path, mode: False)
    denied = r"predictions.csv: cannot write it \((permission denied|read-only file system) in "
    with pytest.raises(OutputError, match=denied):
        atomic.check_destination(destination)
    monkeypatch.undo()

    # creating the temporary fails (a read-only file system) on a disk that reports no
    # free space, as /proc and read-only mounts do: the real reason, and nothing left behind
    real_open = os.open

    def read_only(path, flags, mode=0o777):
        if ".tmp" in str(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, mode)

    monkeypatch.setattr(atomic.os, "open", read_only)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(0, 0, 0))
    with pytest.raises(OutputError) as caught:
        atomic.write_text(destination, "a,b\n")
    assert str(caught.value) == f"{destination}: cannot write it (read-only file system)"
    assert not isinstance(caught.value, DiskFullError)
    assert list(destination.parent.iterdir()) == []


def test_an_output_that_is_a_fifo_a_device_or_in_dev_is_refused_and_left_as_it_was(model_files, tmp_path, capsys):
    """An atomic write renames a new file over the destination: over a FIFO, a device (as
    root, /dev/null itself) or the /dev/stdout link, that would replace it."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    to_null = tmp_path / "null-link"
    to_null.symlink_to("/dev/null")
    for output, words in [(fifo, "is a named pipe (FIFO), not a file"), (to_null, "is a character device, not a file"),
                          (Path("/dev/stdout"), "is in /dev, the system's"),
                          (Path("/dev/new.csv"), "is in /dev, the system's")]:
        error = one_line_error(capsys, ["predict", str(model_files["checkpoint"]), str(model_files["photos"]),
                                        "--output", str(output)], 1)
        assert words in error, error
    assert fifo.is_fifo() and to_null.is_symlink() and not Path("/dev/new.csv").exists()
    assert atomic.in_system_folder(Path("/dev/shm/predictions.csv")) is None  # ordinary files live there


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_writing_into_proc_is_not_called_a_full_disk():
    with pytest.raises(OutputError, match=r"^/proc/predictions.csv: is in /proc, the system's") as caught:
        atomic.write_text("/proc/predictions.csv", "a,b\n")
    assert "full" not in str(caught.value)


def test_predict_refuses_an_output_that_is_its_model_or_one_of_its_images(model_files, tmp_path, capsys):
    for name in ("model.pt", "model.onnx"):
        shutil.copy(model_files["onnx" if name.endswith(".onnx") else "checkpoint"], tmp_path / name)
    shutil.copy(model_files["photos"] / "0.png", tmp_path / "a.png")
    before = {path: path.read_bytes() for path in tmp_path.iterdir()}
    for model, output, words in [("model.pt", "model.pt", "is the model being read"),
                                 ("model.onnx", "./model.onnx", "is the model being read"),
                                 ("model.pt", "a.png", "is one of the images being classified")]:
        error = one_line_error(capsys, ["predict", str(tmp_path / model), str(tmp_path / "a.png"),
                                        "--output", str(tmp_path / output)], 1)
        assert f"{tmp_path / output}: {words}; give another --output" in error
    assert {path: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_export_refuses_to_overwrite_its_own_checkpoint_and_other_wrong_outputs(model_files, tmp_path, capsys):
    checkpoint = tmp_path / "model.pt"
    shutil.copy(model_files["checkpoint"], checkpoint)
    before = checkpoint.read_bytes()
    cases = [(["--format", "onnx", "--output", str(checkpoint)], 1, "is the checkpoint being exported"),
             (["--format", "onnx", "--output", str(tmp_path / "." / "model.pt")], 1, "is the checkpoint"),
             (["--format", "torchscript", "--output", str(tmp_path / "model.onnx")], 1,
              "a .onnx name would be read as ONNX"),
             (["--format", "onnx", "--output", str(tmp_path)], 1, "is a folder"),
             (["--format", "onnx", "--opset", "5"], 2, "--opset: expected 13 to 20, not 5"),
             (["--format", "onnx", "--opset", "99"], 2, "--opset: expected 13 to 20, not 99"),
             (["--format", "onnx", "--check-images", str(tmp_path / "nowhere")], 2, "nowhere: no such folder"),
             # a folder named on purpose that holds no prepared images: not a check on noise
             (["--format", "onnx", "--check-images", str(tmp_path)], 2, "no prepared test images of shape")]
    for arguments, code, words in cases:
        error = one_line_error(capsys, ["export", str(checkpoint), *arguments], code)
        assert words in error, error
    assert checkpoint.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


@pytest.mark.timeout(30)
def test_check_images_whose_array_header_is_damaged_or_a_fifo_is_one_line(model_files, tmp_path, capsys):
    """--check-images names a folder someone sent: a test_images.npy whose header claims a negative
    shape was an OverflowError traceback, and a FIFO blocked the export for good."""
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "meta.json").write_text(json.dumps({"input_shape": [1, 28, 28]}))  # the checkpoint's
    header = repr({"descr": "|u1", "fortran_order": False, "shape": (-100, 1, 28, 28)}).encode().ljust(117) + b"\n"
    (prepared / "test_images.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
    for _ in ("damaged header", "fifo"):
        error = one_line_error(capsys, ["export", str(model_files["checkpoint"]), "--format", "onnx",
                                        "--output", str(tmp_path / "m.onnx"), "--check-images", str(prepared)], 2)
        assert "no prepared test images of shape [1, 28, 28]" in error and not (tmp_path / "m.onnx").exists()
        (prepared / "test_images.npy").unlink()
        os.mkfifo(prepared / "test_images.npy")


def test_the_opset_bounds_are_params_yamls_and_both_ends_export(model_files, tmp_path):
    from cnnspec.inference.export import OPSETS, export
    from cnnspec.pipeline.params import load_schema

    opset = load_schema()["properties"]["export"]["properties"]["opset"]
    assert (opset["minimum"], opset["maximum"]) == OPSETS
    for value in OPSETS:
        result = export(model_files["checkpoint"], "onnx", tmp_path / f"opset{value}.onnx", tmp_path, value)
        assert result["difference"] <= 1e-4


# --- files that are not checkpoints ------------------------------------------------------

def test_files_that_are_not_checkpoints_say_what_they_are(model_files, tmp_path):
    onnx_named_bin = tmp_path / "model.bin"
    shutil.copy(model_files["onnx"], onnx_named_bin)
    text = tmp_path / "notes.pt"
    text.write_text("hello\n")
    for path, words in [(model_files["torchscript"], "a TorchScript export (cnnspec export --format torchscript)"),
                        (onnx_named_bin, "perhaps an ONNX model: cnnspec predict runs one named .onnx"),
                        (model_files["photos"] / "0.png", "this is an image"),
                        (text, "this is another kind of file"),
                        (tmp_path, "a folder, not a checkpoint file")]:
        with pytest.raises(TrainingError) as caught:
            read_checkpoint(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: ") and words in message and "\n" not in message, message
        assert "damaged" not in message and "run code" not in message


def test_an_onnx_file_is_recognised_whatever_the_case_of_its_suffix(model_files, tmp_path, capsys):
    upper = tmp_path / "MODEL.ONNX"
    shutil.copy(model_files["onnx"], upper)
    capsys.readouterr()
    assert cli(["predict", str(upper), str(model_files["photos"] / "0.png"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["class"] in list("abcdefghij")


def rewritten_onnx(source: Path, destination: Path, **metadata) -> Path:
    import onnx

    graph = onnx.load(str(source))
    for entry in graph.metadata_props:
        key = entry.key.removeprefix("cnnspec.")
        if key in metadata:
            entry.value = metadata[key]
    destination.write_bytes(graph.SerializeToString())
    return destination


def test_onnx_metadata_that_does_not_fit_its_graph_is_refused_before_any_image(model_files, tmp_path, capsys):
    source, image = model_files["onnx"], str(model_files["photos"] / "0.png")
    cases = [({"classes": json.dumps(["cat", "dog"])}, "its metadata does not match its graph (probabilities"),
             ({"image_size": "[64, 64]"}, "its metadata does not match its graph (images"),
             ({"channels": "3"}, "its metadata does not match its graph (images"),
             ({"classes": "5"}, "damaged cnnspec metadata (classes: expected a list of class names)"),
             ({"image_size": "[0, 28]"}, "damaged cnnspec metadata (image_size"),
             ({"resize": "squash"}, "damaged cnnspec metadata (resize"),
             ({"image_size": "[40000, 40000]"}, "damaged cnnspec metadata (image_size: expected [height, width], "
                                                "each 1 to 8192"),
             ({"channels": "2"}, "damaged cnnspec metadata (channels: expected 1 or 3, not 2)"),
             ({"classes": "[" * 100000}, "damaged cnnspec metadata (JSON nested deeper"),
             ({"classes": json.dumps(["\x1b[2Jcat"] + list("bcdefghij"))},
              "damaged cnnspec metadata (classes: '\\x1b[2Jcat' holds a control character or line break)"),
             ({"classes": json.dumps(["a\nimg9.png  fake  1.0000"] + list("bcdefghij"))},
              "damaged cnnspec metadata (classes: 'a\\nimg9.png  fake  1.0000' holds a control character")]
    for index, (metadata, words) in enumerate(cases):
        edited = rewritten_onnx(source, tmp_path / f"edited{index}.onnx", **metadata)
        error = one_line_error(capsys, ["predict", str(edited), image], 1)
        assert f"{edited}: {words}" in error, error


def external_data_onnx(source: Path, destination: Path, where: str) -> Path:
    """`source` with one tensor's data said to lie in ../../../etc/passwd: in an
    initializer, a node attribute, or an initializer of a subgraph (an If node's branch)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(source))

    def outside(tensor):
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value="../../../etc/passwd")
        return tensor

    if where == "initializer":
        outside(model.graph.initializer[0])
    else:
        tensor = outside(helper.make_tensor("stolen", onnx.TensorProto.FLOAT, [1], [0.0]))
        if where == "attribute":
            node = helper.make_node("Constant", [], ["unused"], value=tensor)
        else:
            branch = helper.make_graph([], "branch", [], [helper.make_tensor_value_info("stolen", 1, [1])],
                                       initializer=[tensor])
            node = helper.make_node("If", ["condition"], ["unused"], then_branch=branch, else_branch=branch)
        model.graph.node.append(node)
    destination.write_bytes(model.SerializeToString())
    return destination


@pytest.mark.parametrize("where", ["initializer", "attribute", "subgraph"])
def test_an_onnx_tensor_whose_data_lies_in_another_file_is_refused(model_files, tmp_path, capsys, monkeypatch, where):
    def must_not_run(model, **options):
        raise AssertionError("onnxruntime was given a model that reads another file")

    monkeypatch.setattr(onnx_model, "_session", must_not_run)
    edited = external_data_onnx(model_files["onnx"], tmp_path / "outside.onnx", where)
    error = one_line_error(capsys, ["predict", str(edited), str(model_files["photos"] / "0.png")], 1)
    assert f"{edited}: tensor '" in error and "keeps its data in another file" in error


def test_onnxruntime_runs_the_bytes_that_were_checked(model_files, monkeypatch):
    given = []
    monkeypatch.setattr(onnx_model, "_session", lambda model, run=onnx_model._session, **options: (
        given.append(model), run(model, **options))[1])
    onnx_model.OnnxModel(model_files["onnx"])
    assert given == [model_files["onnx"].read_bytes()]


def test_an_onnx_path_that_is_a_fifo_a_device_or_huge_is_refused_at_once(model_files, tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo.onnx")
    (tmp_path / "zero.onnx").symlink_to("/dev/zero")
    with open(tmp_path / "huge.onnx", "wb") as file:
        file.truncate(3 << 30)  # sparse
    image = str(model_files["photos"] / "0.png")
    for name, words in [("fifo.onnx", "it is a named pipe (FIFO), not a regular file"),
                        ("zero.onnx", "it is a character device, not a regular file"),
                        ("huge.onnx", "larger than 2,147,483,647 bytes")]:
        error = one_line_error(capsys, ["predict", str(tmp_path / name), image], 1)
        assert f"{tmp_path / name}: " in error and words in error, error


def test_an_onnx_model_runs_on_the_cpu_only(model_files, capsys):
    error = one_line_error(capsys, ["predict", str(model_files["onnx"]), str(model_files["photos"]),
                                    "--device", "cuda"], 2)
    assert "--device cuda: an ONNX model runs on the CPU" in error


# --- ONNX graphs that loop, size tensors from data or return another shape ----------------

def graph_after_probabilities(source: Path, destination: Path, nodes, initializers=(), functions=()) -> Path:
    """`source` with `nodes` appended after its softmax: they read `softmax` (the real
    probabilities) and the input `images`, and must write `probabilities`."""
    import onnx

    model = onnx.load(str(source))
    for node in model.graph.node:
        node.output[:] = ["softmax" if name == "probabilities" else name for name in node.output]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(initializers)
    model.functions.extend(functions)
    destination.write_bytes(model.SerializeToString())
    return destination


def hostile_nodes(kind: str):
    """Nodes (and initializers) that add a term of 0 computed by `kind` to the probabilities."""
    from onnx import TensorProto, helper, numpy_helper

    def constant(name, values, dtype=np.int64):
        return numpy_helper.from_array(np.array(values, dtype), name)

    zero = [constant("zero", 0.0, np.float32)]
    summed = [helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0)]
    add_zero_times = [helper.make_node("ReduceSum", ["big"], ["big_total"], keepdims=0),
                      helper.make_node("Mul", ["big_total", "zero"], ["nothing"]),
                      helper.make_node("Add", ["softmax", "nothing"], ["probabilities"])]
    if kind == "Loop":  # 10**15 iterations of x + 1
        body = helper.make_graph(
            [helper.make_node("Add", ["x_in", "one"], ["x_out"]), helper.make_node("Identity", ["go_in"], ["go_out"])],
            "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                     helper.make_tensor_value_info("go_in", TensorProto.BOOL, []),
                     helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [])],
            [helper.make_tensor_value_info("go_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("x_out", TensorProto.FLOAT, [])],
            [constant("one", 1.0, np.float32)])
        nodes = [helper.make_node("Loop", ["trips", "go", "total"], ["big"], body=body)]
        return summed + nodes + add_zero_times, zero + [constant("trips", 10**15), constant("go", True, bool)]
    if kind in ("Expand", "Tile"):  # 30000 x 30000 floats from one image
        return summed + [helper.make_node("Reshape", ["total", "one_by_one"], ["cell"]),
                         helper.make_node(kind, ["cell", "size"], ["big"])] + add_zero_times, \
            zero + [constant("one_by_one", [1, 1]), constant("size", [30000, 30000])]
    if kind == "Range":
        return [helper.make_node("Range", ["start", "total", "step"], ["big"])] + summed + add_zero_times, \
            zero + [constant("start", 0.0, np.float32), constant("step", 1e-9, np.float32)]
    if kind == "ConstantOfShape":  # folded when the session is made: 160 GB
        return [helper.make_node("ConstantOfShape", ["size"], ["big"])] + add_zero_times, \
            zero + [constant("size", [200000, 200000])]
    if kind == "custom operator set":
        return [helper.make_node("Unknown", ["softmax"], ["probabilities"], domain="example.hostile")], []
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["Loop", "Expand", "Tile", "Range", "ConstantOfShape", "custom operator set"])
def test_a_graph_that_loops_or_sizes_tensors_from_values_is_refused_before_onnxruntime(
        model_files, tmp_path, capsys, monkeypatch, kind):
    def must_not_run(model, **options):
        raise AssertionError("onnxruntime was given a graph that loops or sizes tensors from values")

    monkeypatch.setattr(onnx_model, "_session", must_not_run)
    nodes, initializers = hostile_nodes(kind)
    hostile = graph_after_probabilities(model_files["onnx"], tmp_path / "hostile.onnx", nodes, initializers)
    error = one_line_error(capsys, ["predict", str(hostile), str(model_files["photos"] / "0.png")], 1)
    named = "ConstantOfShape" if kind == "ConstantOfShape" else "example.hostile" if kind.startswith("custom") \
        else f"node of type {kind}"
    assert f"{hostile}: the graph holds " in error and named in error and "cnnspec export never writes" in error


def test_a_graph_with_a_local_function_is_refused(model_files, tmp_path, capsys):
    from onnx import helper

    function = helper.make_function("example.hostile", "Twice", ["x"], ["y"],
                                    [helper.make_node("Identity", ["x"], ["y"])], [helper.make_opsetid("", 17)])
    node = helper.make_node("Twice", ["softmax"], ["probabilities"], domain="example.hostile")
    hostile = graph_after_probabilities(model_files["onnx"], tmp_path / "function.onnx", [node], functions=[function])
    error = one_line_error(capsys, ["predict", str(hostile), str(model_files["photos"] / "0.png")], 1)
    assert f"{hostile}: the graph holds a local function ('Twice')" in error


@pytest.mark.parametrize("spec_name", ["resnet50v2_transfer", "shufflenet_v2_x1_0", "mobilenet_v3_small",
                                       "convnext_tiny", "speedrun94"])
def test_cnnspecs_own_exports_of_shipped_specs_pass_the_operator_check(spec_name):
    """The specs whose exports hold the most kinds of operators: resnet50v2_transfer's
    pad layers write ConstantOfShape and Pad and its resize Resize, shufflenet's channel
    shuffle Reshape from Shape; the others LayerNormalization, HardSwish, MatMul."""
    import onnx

    from cnnspec.inference.metadata import refused_operator
    from cnnspec.inference.onnx_graph import onnx_bytes

    spec_file = Path(__file__).parent.parent / "specs" / f"{spec_name}.yaml"
    spec = cnnspec.parse_spec(spec_file.read_text(), str(spec_file))
    network = cnnspec.build_model(spec, (3, 32, 32), 10, load_weights=False).eval()
    model = predict_module.InferenceModel(network, [0.5] * 3, [0.25] * 3, list("abcdefghij"), 3, (32, 32),
                                          "stretch", {"mean": [0.5] * 3, "std": [0.25] * 3}).eval()
    for opset in (13, 17, 20):
        assert refused_operator(onnx.load_from_string(onnx_bytes(model, torch.rand(2, 3, 32, 32), opset))) is None



def test_an_onnx_file_asking_for_more_memory_than_its_cap_is_one_line(model_files, tmp_path):
    """The probabilities padded by 100,000,000 zeros a side (800 MB for one image) and sliced
    back to (N, 10): onnxruntime would hold all of it, and a larger pad would draw the
    kernel's OOM killer. Run in a fresh process, whose arena (registered once a process)
    gets a 64 MiB cap."""
    import subprocess
    import sys

    from onnx import helper, numpy_helper

    def constant(name, values):
        return numpy_helper.from_array(np.array(values, np.int64), name)

    nodes = [helper.make_node("Pad", ["softmax", "pads"], ["padded"]),
             helper.make_node("Slice", ["padded", "starts", "ends", "axes"], ["probabilities"])]
    constants = [constant("pads", [0, 10**8, 0, 10**8]), constant("starts", [10**8]),
                 constant("ends", [10**8 + 10]), constant("axes", [1])]
    padded = graph_after_probabilities(model_files["onnx"], tmp_path / "padded.onnx", nodes, constants)
    image = str(model_files["photos"] / "0.png")
    script = ("import sys\nfrom cnnspec.inference import onnx_model\nonnx_model.arena_bytes = lambda: 64 << 20\n"
              f"from cnnspec.cli import main\nsys.exit(main(['predict', {str(padded)!r}, {image!r}]))\n")
    repository = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(repository)})
    assert done.returncode == 1, done.stderr
    said = done.stderr.removeprefix(f"error: {padded}: ")
    assert re.fullmatch(r"the graph asked for 800,000,\d{3} bytes at once on 1 images, more than the 64 MiB "
                        r"cnnspec lets an ONNX file's runs hold \(half the memory free when the first was loaded\); "
                        r"a smaller --batch-size helps a real model\n", said), done.stderr  # 800,000,040 aligned
    model = onnx_model.OnnxModel(model_files["onnx"])  # a real export runs as before, in this process
    assert model.probabilities(torch.zeros(2, 1, 28, 28)).shape == (2, 10)

def test_a_graph_that_returns_another_shape_than_n_by_classes_is_one_line(model_files, tmp_path, capsys):
    from onnx import helper

    averaged = helper.make_node("ReduceMean", ["softmax"], ["probabilities"], axes=[0], keepdims=1)
    edited = graph_after_probabilities(model_files["onnx"], tmp_path / "mean.onnx", [averaged])
    output = tmp_path / "predictions.csv"
    error = one_line_error(capsys, ["predict", str(edited), str(model_files["photos"]), "--output", str(output)], 1)
    assert f"{edited}: the graph returned probabilities of shape [1, 10] for 3 images, not [3, 10]" in error
    assert not output.exists()


def test_onnxruntimes_failures_are_one_line_and_its_log_prints_nothing(model_files, tmp_path, capfd):
    from onnx import helper, numpy_helper

    # 3 images x 10 classes do not reshape to 4 rows: onnxruntime fails while it runs
    unused = numpy_helper.from_array(np.zeros(1, np.float32), "unused")  # onnxruntime warns it removes it
    rows = numpy_helper.from_array(np.array([4, -1], np.int64), "rows")
    reshape = helper.make_node("Reshape", ["softmax", "rows"], ["probabilities"])
    failing = graph_after_probabilities(model_files["onnx"], tmp_path / "failing.onnx", [reshape], [unused, rows])
    with pytest.raises(SystemExit) as caught:
        cli(["predict", str(failing), str(model_files["photos"])])
    error = capfd.readouterr().err  # onnxruntime logs to the file descriptor, past sys.stderr
    assert caught.value.code == 1 and error.count("\n") == 1 and "\x1b" not in error, error
    assert error.startswith(f"error: {failing}: onnxruntime failed on 3 images (") and "Reshape" in error

    warned = graph_after_probabilities(model_files["onnx"], tmp_path / "warned.onnx",
                                       [helper.make_node("Identity", ["softmax"], ["probabilities"])], [unused])
    assert cli(["predict", str(warned), str(model_files["photos"]), "--format", "json"]) == 0
    assert capfd.readouterr().err == ""


def test_an_onnx_run_past_its_time_limit_is_stopped_with_one_line(model_files, tmp_path, monkeypatch):
    """A Loop of 10**15 iterations (refused when the file is read, so given to a session
    here directly) is stopped by the time limit of each batch."""
    import time

    from cnnspec.inference.metadata import ExportError

    nodes, initializers = hostile_nodes("Loop")
    looping = graph_after_probabilities(model_files["onnx"], tmp_path / "loop.onnx", nodes, initializers)
    monkeypatch.setattr(onnx_model, "RUN_SECONDS_FLOOR", 1)
    monkeypatch.setattr(onnx_model, "RUN_SECONDS_PER_MILLION_INPUT_VALUES", 0)
    model = onnx_model.OnnxModel.__new__(onnx_model.OnnxModel)
    model.session, model.name = onnx_model._session(looping.read_bytes()), str(looping)
    model.classes = list("abcdefghij")
    started = time.monotonic()
    with pytest.raises(ExportError, match=r"loop.onnx: onnxruntime ran for more than 1 s on 2 images and was stopped"):
        model.probabilities(torch.rand(2, 1, 28, 28))
    assert time.monotonic() - started < 10


# --- the images named --------------------------------------------------------------------

def test_an_image_named_twice_in_any_spelling_has_one_row(model_files, tmp_path, capsys, monkeypatch):
    photos = model_files["photos"]
    link = tmp_path / "link.png"
    link.symlink_to(photos / "1.png")
    monkeypatch.chdir(photos.parent)
    capsys.readouterr()
    assert cli(["predict", str(model_files["checkpoint"]), "photos/0.png", "./photos/0.png", str(link),
                "photos", "--format", "json"]) == 0
    rows = [row["path"] for row in json.loads(capsys.readouterr().out)]
    assert rows == ["photos/0.png", str(link), "photos/2.png"]


def test_an_empty_folder_or_a_fifo_among_the_paths_is_an_error(model_files, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path, words in [(empty, "no image files in this folder (only 1 file without an image suffix (.txt); "),
                        (fifo, "not a regular file or folder")]:
        error = one_line_error(capsys, ["predict", str(model_files["checkpoint"]), str(model_files["photos"]),
                                        str(path)], 2)
        assert f"{path}: {words}" in error


def test_a_folder_leaves_out_hidden_files_and_names_the_files_it_does_not_read(model_files, tmp_path, capsys):
    """A Mac writes `._IMG.jpg` beside each photo on a USB stick, and an iPhone's photos
    are .heic: neither may fail the run, and neither may vanish unsaid."""
    (tmp_path / "trip" / ".thumbnails").mkdir(parents=True)
    for name in ["trip/a.png", "trip/.thumbnails/a.png"]:
        shutil.copy(model_files["photos"] / "0.png", tmp_path / name)
    (tmp_path / "trip" / "._a.png").write_bytes(b"\x00\x05\x16\x07Mac OS X")
    (tmp_path / "trip" / "IMG_1.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    assert cli(["predict", str(model_files["checkpoint"]), str(tmp_path / "trip")]) == 0
    captured = capsys.readouterr()
    assert [line.split(",")[0] for line in captured.out.splitlines()[1:]] == [str(tmp_path / "trip" / "a.png")]
    assert captured.err == f"note: {tmp_path / 'trip'}: 1 file without an image suffix (.heic) not read\n"


def test_a_file_whose_suffix_holds_a_line_break_is_counted_on_one_line(tmp_path, capsys):
    # the count of files not read quotes their suffixes: a name from someone else's folder
    # printed "error: the model is broken" as a line of its own, and an escape sequence raw
    (tmp_path / "trip" / "only").mkdir(parents=True)
    (tmp_path / "trip" / "a.png").write_bytes(b"")
    (tmp_path / "trip" / "evil.x\nerror: the model is broken").write_bytes(b"")
    (tmp_path / "trip" / "only" / "b.x\x1b[2Jy").write_bytes(b"")
    assert image_paths.find_images([str(tmp_path / "trip")]) == [str(tmp_path / "trip" / "a.png")]
    assert capsys.readouterr().err == (f"note: {tmp_path / 'trip'}: 2 files without an image suffix "
                                       "(.x\\nerror: the model is broken, .x\\x1b[2jy) not read\n")
    with pytest.raises(image_paths.NoImagesError) as caught:
        image_paths.find_images([str(tmp_path / "trip" / "only")])
    assert "(.x\\x1b[2jy)" in str(caught.value) and "\x1b" not in str(caught.value)


def test_the_counts_of_files_left_out_group_thousands(tmp_path, capsys):
    """As predict's other lines write counts; preprocess's line of files it ignored likewise."""
    from cnnspec.data import listing

    (tmp_path / "photos" / "cat").mkdir(parents=True)
    (tmp_path / "photos" / "dog").mkdir()
    for name in ("cat", "dog"):
        (tmp_path / "photos" / name / "a.png").write_bytes(b"")
    for index in range(1000):
        (tmp_path / "photos" / f"{index}.txt").write_bytes(b"")
    capsys.readouterr()
    image_paths.find_images([str(tmp_path / "photos")])
    assert capsys.readouterr().err == \
        f"note: {tmp_path / 'photos'}: 1,000 files without an image suffix (.txt) not read\n"
    listing.scan_folder(tmp_path / "photos")
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'photos'}: ignored 1,000 files (.txt) outside the class")


@pytest.mark.timeout(60)
def test_a_recursive_glob_does_not_follow_symlinked_folders(model_files, tmp_path, monkeypatch):
    (tmp_path / "g" / "sub" / ".hidden").mkdir(parents=True)
    for name in ["g/a.png", "g/sub/b.png", "g/sub/.c.png", "g/sub/.hidden/d.png"]:
        shutil.copy(model_files["photos"] / "0.png", tmp_path / name)
    for link, target in [("g/sub/l1", ".."), ("g/sub/l2", ".."), ("g/l3", ".")]:
        (tmp_path / link).symlink_to(target)  # glob.glob(recursive=True) runs for ever here
    monkeypatch.chdir(tmp_path)
    assert image_paths.find_images(["g/**/*.png"]) == ["g/a.png", "g/sub/b.png"]
    assert image_paths.find_images([f"{tmp_path}/**/.*.png"]) == [f"{tmp_path}/g/sub/.c.png"]
    assert image_paths.find_images(["g/*/b.png"]) == ["g/sub/b.png"]  # one level: as glob has it


def test_top_k_beyond_the_classes_gives_every_class_once(model_files, capsys):
    capsys.readouterr()
    assert cli(["predict", str(model_files["checkpoint"]), str(model_files["photos"] / "0.png"),
                "--top-k", "12"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split(",")[-3:] == ["class_10", "probability_10", "error"]
    assert sorted(row.split(",")[1:-1:2]) == list("abcdefghij")


def test_the_closing_counts_group_thousands_as_the_progress_lines_do(model_files, tmp_path, capsys, monkeypatch):
    image = str(model_files["photos"] / "0.png")
    rows = [predict_module.Prediction(image, ["a"], [1.0], None)] * 1234
    rows += [predict_module.Prediction(image, [], [], f"{image}: damaged or unreadable image (x)")] * 2
    monkeypatch.setattr(predict_module, "predict_files", lambda *args, **kwargs: rows)
    capsys.readouterr()
    assert cli(["predict", str(model_files["checkpoint"]), image, "--output", str(tmp_path / "out.csv")]) == 1
    said = capsys.readouterr().err.splitlines()
    assert said[-2:] == [f"wrote 1,236 predictions to {tmp_path / 'out.csv'}", "2 of 1,236 images could not be read"]


# --- the Python API ----------------------------------------------------------------------

def test_the_api_refuses_pixels_of_the_wrong_range_or_kind(model_files):
    model = cnnspec.load_model(model_files["checkpoint"])
    pixels = np.asarray(Image.open(model_files["photos"] / "0.png"))
    reference = cnnspec.predict(model, pixels, top_k=3)[0]
    as_int64 = cnnspec.predict(model, pixels.astype(np.int64), top_k=3)[0]
    assert as_int64.classes == reference.classes and as_int64.probabilities == reference.probabilities
    floats = cnnspec.predict(model, pixels[None].astype(np.float32) / 255, top_k=3)[0]
    assert floats.classes == reference.classes
    assert floats.probabilities == pytest.approx(reference.probabilities, abs=1e-6)
    for wrong, words in [(pixels[None].astype(np.float32), "divide by 255"),
                         (np.full((1, 28, 28), np.nan, np.float32), "divide by 255"),
                         (pixels.astype(np.int64) + 300, "integer pixels must be in 0..255"),
                         (pixels.astype(bool), "expected uint8 pixels or floats in 0..1, not bool")]:
        with pytest.raises(DataError, match=words):
            cnnspec.predict(model, wrong)
    for options in [{"batch_size": 0}, {"top_k": 0}, {"top_k": 1.5}]:
        with pytest.raises(ValueError, match=f"{next(iter(options))} must be a whole number >= 1"):
            cnnspec.predict(model, pixels, **options)


def test_the_api_refuses_inputs_it_cannot_read_and_a_device_it_would_ignore(model_files):
    model = cnnspec.load_model(model_files["checkpoint"])
    with open(model_files["photos"] / "0.png", "rb") as handle:  # an int: once opened as a descriptor
        with pytest.raises(DataError, match=r"input 0: expected a path, the bytes of an image file, .* not int"):
            cnnspec.predict(model, [handle.fileno()])
        assert handle.read(4) == b"\x89PNG"  # the caller's file is still open
    with pytest.raises(DataError, match="not int"):
        cnnspec.predict(model, memoryview(b"\x89PNG"))  # a memoryview is a sequence of ints
    with pytest.raises(ValueError, match="device applies when predict loads the checkpoint"):
        cnnspec.predict(model, str(model_files["photos"] / "0.png"), device="cpu")
    pixels = np.asarray(Image.open(model_files["photos"] / "0.png"))[None].astype(np.float32) / 255
    as_bf16 = cnnspec.predict(model, torch.from_numpy(pixels).bfloat16(), top_k=3)[0]
    assert as_bf16.classes[0] == cnnspec.predict(model, pixels, top_k=3)[0].classes[0]


def test_the_onnxruntime_engine_refuses_a_model_in_training_mode_and_leaves_it_alone(model_files):
    from cnnspec.inference.metadata import ExportError

    model = cnnspec.load_model(model_files["checkpoint"]).train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(ExportError, match="runs the model in eval mode; call model.eval"):
        cnnspec.predict(model, str(model_files["photos"] / "0.png"), engine="onnxruntime")
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_reading_an_image_leaves_pillows_own_pixel_limit_alone(model_files):
    from cnnspec.data.images import read_image

    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the user's own choice for their own images
    try:
        read_image(model_files["photos"] / "0.png", 1)
        assert Image.MAX_IMAGE_PIXELS is None
    finally:
        Image.MAX_IMAGE_PIXELS = before
