"""The train and evaluate stages take their values from params.resolved.yaml, the file
the resolve stage writes and DVC tracks (cnnspec.pipeline.resolved.load_resolved_params):
a current file is used as written and silently; a missing or out-of-date one (a stage
run alone after an edit) is replaced by params.yaml resolved in memory, with one note."""
import json
from pathlib import Path

import pytest
import yaml

from cnnspec.errors import ParamsError
from cnnspec.pipeline.params import load_params
from cnnspec.pipeline.resolved import load_resolved_params
from stages.resolve import resolve

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ["recipe", "model", "train"]


def project(tmp_path, monkeypatch, train="{epochs: 3}") -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.yaml").write_text((REPO / "specs" / "simcnn.yaml").read_text(encoding="utf-8"))
    params = Path("params.yaml")  # as a stage names it, relative to where it runs
    params.write_text(f"recipe: keras_adam\nmodel: {{spec: net.yaml}}\ntrain: {train}\n")
    return params


def notes_of(params_path, sections=SECTIONS):
    notes = []
    return load_resolved_params(params_path, sections, say=notes.append), notes


def test_the_committed_file_is_what_resolve_writes_from_the_committed_params(tmp_path, monkeypatch):
    """params.resolved.yaml is in git (what a pull request compares): an edit of params.yaml
    or a recipe that does not refresh it would show effective values nobody runs. The
    values are compared, not the stamp, which also hashes the prepared data of a real run."""
    monkeypatch.chdir(REPO)
    resolve(REPO / "params.yaml", tmp_path / "params.resolved.yaml", tmp_path / "no-prepared-data",
            log=lambda line: None)
    written = yaml.safe_load((tmp_path / "params.resolved.yaml").read_text(encoding="utf-8"))
    committed = yaml.safe_load((REPO / "params.resolved.yaml").read_text(encoding="utf-8"))
    assert written == committed, "params.resolved.yaml is stale: run python stages/resolve.py and commit it"


def test_a_current_file_is_used_as_the_resolve_stage_wrote_it(tmp_path, monkeypatch):
    params_path = project(tmp_path, monkeypatch)
    resolve(params_path, tmp_path / "params.resolved.yaml")
    params, notes = notes_of(params_path)
    written = yaml.safe_load((tmp_path / "params.resolved.yaml").read_text(encoding="utf-8"))
    assert notes == []
    assert params == {section: written[section] for section in SECTIONS}
    assert params["train"]["epochs"] == 3 and params["train"]["optimizer"]["name"] == "adam"


def test_a_missing_file_is_resolved_here_with_one_note_naming_the_resolve_stage(tmp_path, monkeypatch):
    params_path = project(tmp_path, monkeypatch)
    params, notes = notes_of(params_path, ["evaluate"])
    assert params == load_params(params_path, ["evaluate"])
    assert len(notes) == 1 and notes[0].startswith("note: params.resolved.yaml is missing")
    assert "python stages/resolve.py" in notes[0]


def test_an_edit_after_resolve_wins_and_is_noted(tmp_path, monkeypatch):
    params_path = project(tmp_path, monkeypatch)
    resolve(params_path, tmp_path / "params.resolved.yaml")
    params_path.write_text(params_path.read_text().replace("epochs: 3", "epochs: 5"))
    params, notes = notes_of(params_path)
    assert params["train"]["epochs"] == 5
    assert len(notes) == 1 and "is older than params.yaml, its recipe" in notes[0]
    assert "python stages/resolve.py" in notes[0]


def test_a_recipe_edited_after_resolve_is_noted_too(tmp_path, monkeypatch):
    params_path = project(tmp_path, monkeypatch)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "mine.yaml").write_text("train: {batch_size: 48}\n")
    params_path.write_text(params_path.read_text().replace("recipe: keras_adam", "recipe: mine"))
    resolve(params_path, tmp_path / "params.resolved.yaml")
    (tmp_path / "recipes" / "mine.yaml").write_text("train: {batch_size: 24}\n")
    params, notes = notes_of(params_path)
    assert params["train"]["batch_size"] == 24 and len(notes) == 1


def test_a_damaged_file_reads_as_out_of_date(tmp_path, monkeypatch):
    params_path = project(tmp_path, monkeypatch)
    (tmp_path / "params.resolved.yaml").write_text("train: [unclosed\n")
    params, notes = notes_of(params_path)
    assert params == load_params(params_path, SECTIONS)
    assert len(notes) == 1 and "older than" in notes[0]


def test_a_value_edited_by_hand_in_a_current_file_is_checked_like_params_yaml(tmp_path, monkeypatch):
    params_path = project(tmp_path, monkeypatch)
    resolved = tmp_path / "params.resolved.yaml"
    resolve(params_path, resolved)
    text = resolved.read_text(encoding="utf-8")
    assert "\n  epochs: 3\n" in text
    resolved.write_text(text.replace("\n  epochs: 3\n", "\n  epochs: -3\n"), encoding="utf-8")
    with pytest.raises(ParamsError, match=r"^params.resolved.yaml: train.epochs: -3 is less than the minimum of 1$"):
        notes_of(params_path)


def test_the_train_and_evaluate_stages_read_the_resolved_file():
    for stage in ("train", "evaluate"):
        text = (REPO / "stages" / f"{stage}.py").read_text(encoding="utf-8")
        assert "load_resolved_params(" in text and "load_stage_params(" not in text


def write_meta(folder: Path, train_images: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").write_text(json.dumps({"counts": {"train": train_images, "val": 10, "test": 10},
                                                  "input_shape": [3, 32, 32], "classes": list("abcdefghij")}))


def test_the_batch_resolve_fitted_to_the_data_is_used_silently(tmp_path, monkeypatch):
    """Resolve caps the recipe's batch for a small training set; train takes the capped
    batch from the file (its stamp matches), not the recipe's, and says nothing."""
    params_path = project(tmp_path, monkeypatch, train="{epochs: 3, batch_size: null}")
    write_meta(tmp_path / "data" / "prepared", train_images=200)
    resolve(params_path, tmp_path / "params.resolved.yaml", prepared=tmp_path / "data" / "prepared",
            log=lambda line: None)
    recipe_batch = load_params(params_path, SECTIONS)["train"]["batch_size"]
    params, notes = notes_of(params_path)
    assert notes == []
    assert params["train"]["batch_size"] < recipe_batch and 200 // params["train"]["batch_size"] >= 10


def test_new_prepared_data_makes_the_file_out_of_date(tmp_path, monkeypatch):
    params_path = project(tmp_path, monkeypatch)
    write_meta(tmp_path / "data" / "prepared", train_images=200)
    resolve(params_path, tmp_path / "params.resolved.yaml", prepared=tmp_path / "data" / "prepared",
            log=lambda line: None)
    write_meta(tmp_path / "data" / "prepared", train_images=5000)
    _, notes = notes_of(params_path)
    assert len(notes) == 1 and "the prepared data" in notes[0]


def test_a_stage_run_alone_resolves_what_the_resolve_stage_would_write(tmp_path, monkeypatch):
    """Without params.resolved.yaml the params are resolved in memory exactly as the
    resolve stage writes them, the batch fitted to the prepared data included."""
    params_path = project(tmp_path, monkeypatch, train="{epochs: 3, batch_size: null}")
    write_meta(tmp_path / "data" / "prepared", train_images=200)
    params, notes = notes_of(params_path)
    assert len(notes) == 1 and "is missing" in notes[0]
    resolve(params_path, tmp_path / "params.resolved.yaml", prepared=tmp_path / "data" / "prepared",
            log=lambda line: None)
    written = yaml.safe_load((tmp_path / "params.resolved.yaml").read_text(encoding="utf-8"))
    assert params["train"] == written["train"] and params["recipe"] == written["recipe"]
    assert params["train"]["batch_size"] < load_params(params_path, SECTIONS)["train"]["batch_size"]


def test_a_class_weight_for_an_unknown_class_names_the_file_it_came_from(tmp_path, monkeypatch):
    prepared = tmp_path / "data" / "prepared"
    write_meta(prepared, train_images=200)  # classes a..j
    params_path = project(tmp_path, monkeypatch, train="{epochs: 3}")
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "cats.yaml").write_text(
        "base: keras_adam\ntrain:\n  class_weights: {multipliers: {cat: 2.0}}\n")
    params_path.write_text("recipe: cats\nmodel: {spec: net.yaml}\ntrain: {epochs: 3}\n")
    with pytest.raises(ParamsError, match=r"^recipes/cats.yaml: train.class_weights.multipliers.cat: unknown "
                                          r"class 'cat'; the classes are a, b, c"):
        resolve(params_path, tmp_path / "params.resolved.yaml", prepared=prepared, log=lambda line: None)
    params_path.write_text("recipe: cats\nmodel: {spec: net.yaml}\n"
                           "train: {epochs: 3, class_weights: {multipliers: {dog: 2.0}}}\n")
    with pytest.raises(ParamsError, match=r"^params.yaml: train.class_weights.multipliers.dog: unknown class"):
        resolve(params_path, tmp_path / "params.resolved.yaml", prepared=prepared, log=lambda line: None)
    assert not (tmp_path / "params.resolved.yaml").exists()
