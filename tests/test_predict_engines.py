"""`cnnspec predict --engine auto|torch|onnxruntime`: which engine runs a .pt checkpoint,
onnxruntime's probabilities against torch's on real Fashion-MNIST images, and the
fallbacks when onnxruntime is missing, broken or the in-memory export fails."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnspec
from cnnspec.cli import build_parser
from cnnspec.cli import main as cli
from cnnspec.inference import export as export_module
from cnnspec.inference import onnx_graph
from cnnspec.inference import predict as predict_module
from cnnspec.inference.onnx_model import OnnxModel
from cnnspec.inference.predict import ONNXRUNTIME_MIN_IMAGES, choose_engine, with_engine
from tests.test_predict import META_GRAY, SPEC, needs_fashion, random_checkpoint, write_pngs
from tests.test_predict import trained as trained  # the module-scoped fixture: a model trained on real images

needs_onnxruntime = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                                       reason="needs onnxruntime (pip install 'cnnspec[export]')")


@pytest.fixture
def checkpoint(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    return random_checkpoint(folder, SPEC, (1, 28, 28), META_GRAY)


@pytest.fixture
def images(tmp_path):
    """Four 28x28 grey PNGs of different brightness patterns."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    generator = np.random.default_rng(0)
    for index in range(4):
        Image.fromarray(generator.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


@pytest.fixture
def exports(monkeypatch):
    """The models OnnxModel.from_model was asked to export, in order."""
    calls = []
    original = OnnxModel.from_model.__func__

    def recording(cls, model):
        calls.append(model)
        return original(cls, model)

    monkeypatch.setattr(OnnxModel, "from_model", classmethod(recording))
    return calls


def rows_of(out: str) -> dict:
    return {row["path"]: {entry["class"]: entry["probability"] for entry in row["top_k"]}
            for row in json.loads(out)}


# ---------------------------------------------------------------- the rule

def test_auto_takes_onnxruntime_only_for_many_images_on_the_cpu_in_eval_mode_without_tta(checkpoint):
    model = cnnspec.load_model(checkpoint)
    assert choose_engine(model, ONNXRUNTIME_MIN_IMAGES - 1) == "torch"
    assert choose_engine(model, ONNXRUNTIME_MIN_IMAGES) == "onnxruntime"
    assert choose_engine(model, ONNXRUNTIME_MIN_IMAGES, tta="flip") == "torch"
    assert choose_engine(model.train(), ONNXRUNTIME_MIN_IMAGES) == "torch"  # the export is eval mode
    model.eval()
    assert choose_engine(model.to("meta"), ONNXRUNTIME_MIN_IMAGES) == "torch"  # not on the CPU
    assert choose_engine(model, 1, "onnxruntime") == "onnxruntime"
    assert choose_engine(model, 10**9, "torch") == "torch"
    with pytest.raises(ValueError, match="auto, torch, onnxruntime"):
        choose_engine(model, 1, "tensorrt")


def test_the_help_states_the_rule_the_code_applies():
    help_text = build_parser()._subparsers._group_actions[0].choices["predict"].format_help()
    assert f"{ONNXRUNTIME_MIN_IMAGES:,} images" in " ".join(help_text.split())


@needs_onnxruntime
def test_the_cli_exports_once_from_the_threshold_on_and_writes_nothing_to_disk(
        checkpoint, images, exports, monkeypatch, capsys):
    monkeypatch.setattr(predict_module, "ONNXRUNTIME_MIN_IMAGES", 4)
    assert cli(["predict", str(checkpoint), str(images), "--format", "json", "--top-k", "10"]) == 0
    captured = capsys.readouterr()
    assert len(exports) == 1 and captured.err == ""
    by_onnxruntime = rows_of(captured.out)
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["model.pt"]

    monkeypatch.setattr(predict_module, "ONNXRUNTIME_MIN_IMAGES", 5)  # one more than there are
    assert cli(["predict", str(checkpoint), str(images), "--format", "json", "--top-k", "10"]) == 0
    assert len(exports) == 1
    by_torch = rows_of(capsys.readouterr().out)
    assert by_torch.keys() == by_onnxruntime.keys() and len(by_torch) == 4
    for path, probabilities in by_torch.items():
        assert by_onnxruntime[path] == pytest.approx(probabilities, abs=1e-5)


@needs_onnxruntime
def test_explicit_engines_override_the_rule(checkpoint, images, exports, monkeypatch, capsys):
    monkeypatch.setattr(predict_module, "ONNXRUNTIME_MIN_IMAGES", 1)
    assert cli(["predict", str(checkpoint), str(images), "--engine", "torch"]) == 0
    assert exports == []
    monkeypatch.setattr(predict_module, "ONNXRUNTIME_MIN_IMAGES", 10**9)
    assert cli(["predict", str(checkpoint), str(images), "--engine", "onnxruntime"]) == 0
    assert len(exports) == 1
    assert cli(["predict", str(checkpoint), str(images), "--tta", "flip"]) == 0  # auto: torch for TTA
    assert len(exports) == 1


def test_engine_flag_parsing(checkpoint, images, capsys):
    parser = build_parser()
    assert parser.parse_args(["predict", "m.pt", "a.png"]).engine == "auto"
    for engine in ("auto", "torch", "onnxruntime"):
        assert parser.parse_args(["predict", "m.pt", "a.png", "--engine", engine]).engine == engine
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["predict", "m.pt", "a.png", "--engine", "tensorrt"])
    assert caught.value.code == 2 and "invalid choice: 'tensorrt'" in capsys.readouterr().err
    for arguments, words in [(["--engine", "onnxruntime", "--tta", "flip"], "--tta needs --engine torch"),
                             (["--engine", "torch"], "an ONNX model runs with onnxruntime")]:
        target = checkpoint.with_suffix(".onnx") if "torch" in arguments else checkpoint
        with pytest.raises(SystemExit) as caught:
            cli(["predict", str(target), str(images), *arguments])
        err = capsys.readouterr().err
        assert caught.value.code == 2 and err.count("\n") == 1 and words in err


# ---------------------------------------------------------------- agreement on a trained model

@needs_fashion
@needs_onnxruntime
@pytest.mark.slow
def test_onnxruntime_gives_torchs_probabilities_on_real_images(trained, tmp_path, capsys):
    checkpoint, _, data = trained
    paths = write_pngs(data["test_images"][:100], tmp_path / "images")
    results = {}
    for engine in ("torch", "onnxruntime"):
        assert cli(["predict", str(checkpoint), str(tmp_path / "images"), "--format", "json",
                    "--top-k", "10", "--batch-size", "32", "--engine", engine]) == 0
        results[engine] = rows_of(capsys.readouterr().out)
    assert set(results["torch"]) == {str(p) for p in paths}
    classes = data["meta"]["classes"]
    torch_probabilities = np.array([[results["torch"][str(p)][c] for c in classes] for p in paths])
    ort_probabilities = np.array([[results["onnxruntime"][str(p)][c] for c in classes] for p in paths])
    np.testing.assert_allclose(ort_probabilities, torch_probabilities, atol=1e-5)
    assert (torch_probabilities.argmax(1) == data["test_labels"][:100]).mean() > 0.5  # it learned
    assert torch_probabilities.max(1).mean() > 0.5  # confident rows, not a flat softmax

    # the Python API: the same rule and engines, on arrays
    model = cnnspec.load_model(checkpoint)
    pixels = data["test_images"][:100]
    by_torch = cnnspec.predict(model, pixels, top_k=10, engine="torch")
    by_ort = cnnspec.predict(model, pixels, top_k=10, engine="onnxruntime")
    for ours, theirs in zip(by_torch, by_ort):
        assert ours.classes[0] == theirs.classes[0]
        assert theirs.probabilities == pytest.approx(ours.probabilities, abs=1e-5)


@needs_onnxruntime
def test_the_session_uses_torchs_thread_count(checkpoint):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        session = OnnxModel.from_model(cnnspec.load_model(checkpoint)).session
        assert session.get_session_options().intra_op_num_threads == 1
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- fallbacks and errors

def auto_then_forced(checkpoint, images, capsys) -> tuple[str, int, str]:
    """`cnnspec predict` with the auto engine, which must still classify the 5 images,
    then with --engine onnxruntime, which must exit: (auto's stderr, exit code, its stderr)."""
    assert cli(["predict", str(checkpoint), str(images)]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 5
    with pytest.raises(SystemExit) as caught:
        cli(["predict", str(checkpoint), str(images), "--engine", "onnxruntime"])
    return captured.err, caught.value.code, capsys.readouterr().err


def test_without_onnxruntime_auto_keeps_torch_silently_and_the_engine_flag_says_how_to_install(
        checkpoint, images, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails as if absent
    monkeypatch.setattr(predict_module, "ONNXRUNTIME_MIN_IMAGES", 1)
    auto_err, code, err = auto_then_forced(checkpoint, images, capsys)
    assert auto_err == "" and code == 1 and err.count("\n") == 1
    assert err.startswith("error: --engine onnxruntime") and "pip install 'cnnspec[export]'" in err


def test_a_broken_onnxruntime_is_one_note_with_auto_and_one_error_with_the_flag(
        checkpoint, images, tmp_path, monkeypatch, capsys):
    fake = tmp_path / "site" / "onnxruntime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("libonnxruntime.so.1: cannot open shared object file")\n')
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    monkeypatch.setattr(predict_module, "ONNXRUNTIME_MIN_IMAGES", 1)
    auto_err, code, err = auto_then_forced(checkpoint, images, capsys)
    assert auto_err == ("note: onnxruntime does not load: libonnxruntime.so.1: cannot open shared "
                        "object file; predicting with torch\n")
    assert code == 1 and err.count("\n") == 1 and "libonnxruntime.so.1" in err


@needs_onnxruntime
def test_a_failing_export_keeps_torch_with_auto_and_is_an_error_with_the_flag(
        checkpoint, images, monkeypatch, capsys):
    def failing(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::frobnicate' to ONNX opset version 17 is "
                           "not supported.\nPlease feel free to request support")

    monkeypatch.setattr(onnx_graph, "onnx_bytes", failing)
    monkeypatch.setattr(predict_module, "ONNXRUNTIME_MIN_IMAGES", 1)
    model = cnnspec.load_model(checkpoint)
    assert with_engine(model, 4) is model
    auto_err, code, err = auto_then_forced(checkpoint, images, capsys)
    assert auto_err == "" and code == 1
    assert err == ("error: the in-memory ONNX export failed: Exporting the operator 'aten::frobnicate' "
                   "to ONNX opset version 17 is not supported.\n")


@needs_onnxruntime
def test_an_export_that_does_not_match_torch_is_not_used(checkpoint, tmp_path, monkeypatch):
    """Another model's graph stands in for the export: the check before use catches it."""
    other = cnnspec.load_model(random_checkpoint(tmp_path, SPEC.replace("filters: 8", "filters: 4"),
                                                 (1, 28, 28), META_GRAY, name="other.pt"))
    real = onnx_graph.onnx_bytes
    monkeypatch.setattr(onnx_graph, "onnx_bytes", lambda model, *args, **kwargs: real(other, *args, **kwargs))
    model = cnnspec.load_model(checkpoint)
    assert with_engine(model, ONNXRUNTIME_MIN_IMAGES) is model
    with pytest.raises(export_module.ExportError, match="differs from PyTorch"):
        with_engine(model, 1, "onnxruntime")


def test_the_onnx_export_in_memory_is_the_file_cnnspec_export_writes(checkpoint, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from cnnspec.inference.metadata import read_metadata

    result = export_module.export(checkpoint, "onnx", tmp_path / "written.onnx", prepared=tmp_path / "none")
    model = cnnspec.load_model(checkpoint)
    example = export_module.check_images(model, tmp_path / "none")[0][:2]
    in_memory = export_module.onnx_bytes(model, example)
    assert Path(result["output"]).read_bytes() == in_memory
    (tmp_path / "again.onnx").write_bytes(in_memory)
    assert read_metadata(tmp_path / "again.onnx")["classes"] == META_GRAY["classes"]
