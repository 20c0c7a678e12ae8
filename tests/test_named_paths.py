"""Params that name files are checked, with their key, before a stage reads any data;
the spec is parsed before the data too. So the user meets the mistake they made first,
not whatever the stage happens to read first."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnspec.errors import ParamsError
from cnnspec.pipeline import params as params_module
from cnnspec.pipeline.params import check_named_paths

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_train_stage(folder: Path, params_text: str) -> subprocess.CompletedProcess:
    """`python stages/train.py` in `folder`, which has no data/prepared at all."""
    (folder / "params.yaml").write_text(params_text)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "train.py")], cwd=folder,
                          capture_output=True, text=True, timeout=120, env=env)


def test_missing_spec_is_named_by_its_key_before_the_missing_data(tmp_path):
    finished = run_train_stage(tmp_path, "model: {spec: specs/does_not_exist.yaml}\ntrain: {device: cpu}\n")
    assert finished.returncode == 2
    assert finished.stderr == ("error: params.yaml: model.spec: specs/does_not_exist.yaml: "
                               "no such file\n")
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics").exists()


def test_a_folder_given_as_the_spec_is_named(tmp_path):
    (tmp_path / "specs").mkdir()
    finished = run_train_stage(tmp_path, "model: {spec: specs}\n")
    assert finished.returncode == 2
    assert finished.stderr.strip() == "error: params.yaml: model.spec: specs: is a folder, not a file"


def test_an_invalid_spec_is_reported_before_the_missing_data(tmp_path):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "broken.yaml").write_text("name: broken\nlayers:\n  - conv: -2\n")
    finished = run_train_stage(tmp_path, "model: {spec: specs/broken.yaml}\n")
    assert finished.returncode == 1
    assert finished.stderr.count("\n") == 1
    assert finished.stderr.startswith("error: specs/broken.yaml:3:")
    assert "data/prepared" not in finished.stderr


def test_with_a_good_spec_the_missing_data_comes_next(tmp_path):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "ok.yaml").write_text("name: ok\nlayers:\n  - flatten\n  - dense: num_classes\n")
    finished = run_train_stage(tmp_path, "model: {spec: specs/ok.yaml}\n")
    assert finished.returncode == 1
    assert "data/prepared/meta.json: missing" in finished.stderr and finished.stderr.count("\n") == 1


def test_new_path_params_slot_into_the_registry(tmp_path, monkeypatch):
    """A param another feature adds (a data folder, an initial checkpoint) needs only an
    entry in NAMED_PATHS; an empty value means the param is unused."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(params_module.NAMED_PATHS, "data.source", "folder")
    monkeypatch.setitem(params_module.NAMED_PATHS, "train.init_from", "file")
    (tmp_path / "spec.yaml").write_text("name: x\n")
    (tmp_path / "images").mkdir()
    params = {"model": {"spec": "spec.yaml"}, "data": {"source": "images"}, "train": {"init_from": ""}}
    check_named_paths(params)  # all present, or unused

    for changed, message in [
        ({"data": {"source": "pictures"}}, "params.yaml: data.source: pictures: no such folder"),
        ({"data": {"source": "spec.yaml"}}, "params.yaml: data.source: spec.yaml: is a file, not a folder"),
        ({"train": {"init_from": "models/old.pt"}}, "params.yaml: train.init_from: models/old.pt: no such file"),
    ]:
        with pytest.raises(ParamsError) as caught:
            check_named_paths({**params, **changed})
        assert str(caught.value) == message


def test_only_the_loaded_sections_are_checked():
    # The evaluate stage loads only `evaluate`: a model.spec it never reads is not its business.
    check_named_paths({"evaluate": {"batch_size": 10}})


def test_an_unreadable_spec_is_named(tmp_path, monkeypatch):
    spec = tmp_path / "secret.yaml"
    spec.write_text("name: x\n")
    # chmod 0 does not stop root, who runs these tests in CI: deny the access check instead
    monkeypatch.setattr("cnnspec.paths.os.access", lambda path, mode: False)  # where path_problem lives
    with pytest.raises(ParamsError) as caught:
        check_named_paths({"model": {"spec": str(spec)}})
    assert str(caught.value) == f"params.yaml: model.spec: {spec}: not readable (permission denied)"


@pytest.mark.parametrize("stage_name", ["download", "preprocess"])
def test_the_data_stages_check_their_path_params_before_touching_data(stage_name, tmp_path, monkeypatch,
                                                                      capsys):
    """The data stages already run the check: a data param that names a folder only needs
    its NAMED_PATHS entry. (data.dataset stands in for such a param here.)"""
    import importlib

    stage = importlib.import_module(f"stages.{stage_name}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(params_module.NAMED_PATHS, "data.dataset", "folder")
    (tmp_path / "params.yaml").write_text("data: {dataset: mnist}\n")
    with pytest.raises(SystemExit) as exit_info:
        stage.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: params.yaml: data.dataset: mnist: no such folder\n"
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("stage_name, params_text, key, value", [
    ("train", "model: {spec: tiny}\n", "model.spec", "tiny"),
    ("evaluate", "evaluate: {tta: none}\n", "evaluate.tta", "none"),
    ("plot", "plot: {misclassified: 36}\n", "plot.misclassified", "36"),
    ("export", "export: {format: onnx}\n", "export.format", "onnx"),
])
def test_every_stage_checks_the_path_params_of_its_sections_first(stage_name, params_text, key, value,
                                                                   tmp_path, monkeypatch, capsys):
    """All stages start with load_stage_params, so a path param added to any section is
    checked before models/, data/ or metrics/ are read. (An existing param stands in.)"""
    import importlib

    stage = importlib.import_module(f"stages.{stage_name}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(params_module.NAMED_PATHS, key, "folder")
    (tmp_path / "params.yaml").write_text(params_text)
    with pytest.raises(SystemExit) as exit_info:
        stage.main(*([[]] if stage_name == "train" else []))  # train parses options: none here
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: params.yaml: {key}: {value}: no such folder\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]

