"""params.yaml validation: every mistake is one ParamsError line naming the key."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cnnspec.errors import ParamsError
from cnnspec.pipeline.params import load_params, load_schema

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_params(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def error_for(tmp_path, text, sections=None):
    with pytest.raises(ParamsError) as caught:
        load_params(write_params(tmp_path, text), sections)
    message = str(caught.value)
    assert "\n" not in message
    return message


BAD_PARAMS = [
    # (yaml, the key the message must name, words the message must hold)
    ("trian: {}\n", "trian", "did you mean 'train'"),
    ("train: {optimzer: {}}\n", "train.optimzer", "did you mean 'optimizer'"),
    ("train: {optimizer: {lrate: 0.1}}\n", "train.optimizer.lrate", "unknown key"),
    ("evaluate: {zzz: 1}\n", "evaluate.zzz", "expected one of: batch_size, tta"),
    ("train: {batch_size: 0}\n", "train.batch_size", "0 is less than the minimum of 1"),
    ("train: {batch_size: 64.0}\n", "train.batch_size", "expected integer, got"),
    ("train: {epochs: ten}\n", "train.epochs", "expected integer, got"),
    ("train: {compile: 1}\n", "train.compile", "expected boolean, got 1"),
    ("train: {optimizer: {lr: -1.0e-3}}\n", "train.optimizer.lr", "less than or equal to the minimum of 0"),
    ("train: {optimizer: {betas: [0.9]}}\n", "train.optimizer.betas", "too short"),
    ("train: {optimizer: {betas: [0.9, 1.5]}}\n", "train.optimizer.betas[1]", "1.5"),
    ("train: {optimizer: {name: sgdd}}\n", "train.optimizer.name", "is not one of"),
    ("train: {scheduler: {name: linear}}\n", "train.scheduler.name", "is not one of"),
    ("train: {loss: {label_smoothing: 1.0}}\n", "train.loss.label_smoothing", "1.0"),
    ("train: {early_stopping: {monitor: accuracy}}\n", "train.early_stopping.monitor", "is not one of"),
    ("train: {class_weights: {multipliers: {cat: 0}}}\n", "train.class_weights.multipliers.cat", "minimum of 0"),
    ("train: {class_weights: {multipliers: {dog: -2.0}}}\n", "train.class_weights.multipliers.dog", "-2.0"),
    ("train: {class_weights: {multipliers: [cat]}}\n", "train.class_weights.multipliers",
     "expected object, got a list"),
    ("data: {val_split: 1.5}\n", "data.val_split", "1.5"),
    ("data: {val_split: -0.1}\n", "data.val_split", "-0.1"),
    ("data: {val_split: 10}\n", "data.val_split", "maximum of 1 (a fraction: for 10% write 0.1)"),
    ("data: {md5: {cifar.tar.gz: nothex}}\n", "data.md5.cifar.tar.gz", "md5 (32 hex digits)"),
    ("data: {md5: 12}\n", "data.md5", "expected string or object, got 12"),
    ("data: {url: ftp://mirror/x.tgz}\n", "data.url", "http://"),
    ("plot: {misclassified: -1}\n", "plot.misclassified", "less than the minimum of 0"),
    ("model: []\n", "model", "expected object, got a list"),
    # a key one level off, a value where its section belongs: pointed to, never moved
    ("train: {lr: 0.1}\n", "train.lr", "(did you mean 'optimizer.lr'?)"),
    ("train: {hflip: true}\n", "train.hflip", "(did you mean 'augment.hflip'?)"),
    ("early_stopping: {patience: 3}\n", "early_stopping", "(did you mean 'train.early_stopping'?)"),
    ("train: {tta: flip}\n", "train.tta", "(did you mean 'evaluate.tta'?)"),
    ("evaluate: {epochs: 3}\n", "evaluate.epochs", "(did you mean 'train.epochs'?)"),
    ("train: {loss: {focal: {gamma: 2.0}}}\n", "train.loss.focal", "(focal is a value of 'name': write name: focal)"),
    ("train: {scheduler: plateau}\n", "train.scheduler", "got 'plateau' (write train.scheduler.name: plateau)"),
    ("train: {early_stopping: true}\n", "train.early_stopping", "(write train.early_stopping.enabled: true)"),
    ("train: {class_weights: balanced}\n", "train.class_weights", "(write train.class_weights.mode: balanced)"),
]


@pytest.mark.parametrize("text, key, words", BAD_PARAMS, ids=[case[1] for case in BAD_PARAMS])
def test_bad_params_name_the_key(tmp_path, text, key, words):
    message = error_for(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'params.yaml'}: {key}: "), message
    assert words in message


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ParamsError, match=r"nope\.yaml: file not found"):
        load_params(tmp_path / "nope.yaml")


def test_syntax_error_gives_the_line(tmp_path):
    message = error_for(tmp_path, "data:\n  dataset: cifar10\n  url: [unclosed\nmodel: {}\n")
    assert message.startswith(f"{tmp_path / 'params.yaml'}:4:")
    assert "invalid YAML" in message


@pytest.mark.parametrize("text, found", [("", "an empty file"), ("- a\n- b\n", "a list"),
                                         ("just text\n", "a str")])
def test_non_mapping_is_refused(tmp_path, text, found):
    assert f"found {found}" in error_for(tmp_path, text)


def test_duplicate_key_is_refused(tmp_path):
    message = error_for(tmp_path, "train:\n  epochs: 1\n  epochs: 2\n")
    assert message.endswith(":3:3: train.epochs: duplicate key (first written on line 2)")


def test_exponent_without_dot_is_a_number(tmp_path):
    params = load_params(write_params(tmp_path, "train: {optimizer: {lr: 1e-4, weight_decay: 5E-4}}\n"))
    assert params["train"]["optimizer"]["lr"] == pytest.approx(1e-4)
    assert params["train"]["optimizer"]["weight_decay"] == pytest.approx(5e-4)


def test_precision_off_is_the_word_not_a_boolean(tmp_path):
    params = load_params(write_params(tmp_path, "train: {precision: off, cpu_precision: off}\n"), ["train"])
    assert params["train"]["precision"] == "off" and params["train"]["cpu_precision"] == "off"


def test_cpu_precision_off_set_with_dash_s_is_the_word(tmp_path, monkeypatch):
    """`dvc exp run -S train.cpu_precision=off` writes `cpu_precision: off` unquoted, over
    a recipe that asks for bf16."""
    from dvc.utils.hydra import apply_overrides

    monkeypatch.chdir(REPO_ROOT)  # recipes/ is read from the working folder, as the stages read it
    path = write_params(tmp_path, "recipe: fashion_cpu\ntrain: {epochs: 1, precision: bf16, cpu_precision: bf16}\n")
    apply_overrides(path, ["train.cpu_precision=off", "train.precision=off"])
    assert "cpu_precision: off" in path.read_text()
    train = load_params(path, ["recipe", "train"])["train"]
    assert train["cpu_precision"] == "off" and train["precision"] == "off"


def test_a_recipe_key_set_empty_with_dash_s_says_how_to_write_empty(tmp_path, monkeypatch):
    """After a fine-tune experiment leaves `lr: 0.0005` in params.yaml, `-S train.optimizer.lr=`
    is how a user hands it back to the recipe; DVC writes '' there, which is not a number."""
    from dvc.utils.hydra import apply_overrides

    monkeypatch.chdir(REPO_ROOT)
    path = write_params(tmp_path, "recipe: small_images\ntrain: {optimizer: {lr: 0.0005}}\n")
    apply_overrides(path, ["train.optimizer.lr="])
    with pytest.raises(ParamsError) as caught:
        load_params(path, ["recipe", "train"])
    assert str(caught.value).endswith("train.optimizer.lr: expected number, got '' (for the recipe's value "
                                      "leave it empty: -S train.optimizer.lr=null, or nothing after `lr:`)")
    apply_overrides(path, ["train.optimizer.lr=null"])  # what the message says works
    assert load_params(path, ["recipe", "train"])["train"]["optimizer"]["lr"] == 2e-3  # small_images' own
    assert "(for the recipe's value" not in error_for(tmp_path, "data: {val_split: ''}\n")  # no recipe there


def test_md5_mapping_and_positive_multipliers_are_accepted(tmp_path):
    text = ("data: {md5: {train-images-idx3-ubyte.gz: cf8536b0aa1a6ac5fa3f23001093305c}}\n"
            "train: {class_weights: {mode: balanced, multipliers: {cat: 2.0, dog: 2}}}\n")
    params = load_params(write_params(tmp_path, text))
    assert params["data"]["md5"] == {"train-images-idx3-ubyte.gz": "cf8536b0aa1a6ac5fa3f23001093305c"}
    assert params["train"]["class_weights"]["multipliers"] == {"cat": 2.0, "dog": 2}


def test_val_split_zero_and_the_airbench_knobs_are_accepted(tmp_path):
    path = write_params(tmp_path, "data: {val_split: 0}\n"
                                  "train: {lookahead: {schedule: cubic, alpha: 0.226},"
                                  " scheduler: {initial_lr_fraction: 0.2}}\n")
    params = load_params(path)
    assert params["data"]["val_split"] == 0
    assert params["train"]["lookahead"]["schedule"] == "cubic"
    assert params["train"]["scheduler"]["initial_lr_fraction"] == 0.2


def test_settings_of_a_section_left_off_are_refused_where_written(tmp_path):
    """Keras turns early stopping on by adding the callback with its settings; a recipe
    that writes them without `enabled: true` trained without it, silently. The same for
    a focal loss's gamma without `name: focal` and a plateau's settings without a name."""
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "mine.yaml").write_text("base: keras_adam\ntrain:\n  early_stopping:\n"
                                       "    monitor: val_accuracy\n    patience: 5\n")
    message = error_for(tmp_path, "recipe: mine\n")
    assert message.startswith(f"{recipes / 'mine.yaml'}:4:5: train.early_stopping: monitor, patience: "), message
    assert "train.early_stopping.enabled is false (from " in message and "keras_adam.yaml:" in message
    assert "write enabled: true" in message
    (recipes / "mine.yaml").write_text("base: keras_adam\ntrain:\n  loss: {gamma: 2, alpha: 0.25}\n")
    assert "train.loss.name is cross_entropy" in error_for(tmp_path, "recipe: mine\n")
    (recipes / "mine.yaml").write_text("base: keras_adam\ntrain:\n  scheduler: {factor: 0.5}\n")
    assert "write name: plateau" in error_for(tmp_path, "recipe: mine\n")
    # params.yaml (an -S override) over a recipe that leaves early stopping off
    message = error_for(tmp_path, "recipe: keras_adam\ntrain: {early_stopping: {patience: 1}}\n")
    assert message.startswith(f"{tmp_path / 'params.yaml'}: train.early_stopping: patience: it is set"), message
    # saying the switch either way is a choice, and a later layer's switch settles it
    (recipes / "mine.yaml").write_text("base: keras_adam\ntrain:\n  early_stopping: {enabled: false, patience: 5}\n")
    assert not load_params(write_params(tmp_path, "recipe: mine\n"))["train"]["early_stopping"]["enabled"]
    (recipes / "mine.yaml").write_text("base: keras_adam\ntrain:\n  early_stopping: {patience: 5}\n")
    on = write_params(tmp_path, "recipe: mine\ntrain: {early_stopping: {enabled: true}}\n")
    assert load_params(on)["train"]["early_stopping"]["patience"] == 5


def test_a_recipe_value_where_a_section_belongs_is_named_under_params_yaml_nulls(tmp_path):
    """params.yaml writes every section with null keys; merged over a recipe's
    `scheduler: plateau` they used to replace it, and the run took the schema's
    warmup_linear without a word."""
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    shipped = (REPO_ROOT / "params.yaml").read_text().replace("recipe: auto", "recipe: mine")
    (recipes / "mine.yaml").write_text("base: keras_adam\ntrain:\n  scheduler: plateau\n")
    message = error_for(tmp_path, shipped)
    assert message == (f"{recipes / 'mine.yaml'}:3:14: train.scheduler: expected object, got 'plateau' "
                       f"(write train.scheduler.name: plateau)"), message
    (recipes / "mine.yaml").write_text("base: keras_adam\ntrain: {}\nearly_stopping: {patience: 3}\n")
    assert "early_stopping belongs under train:" in error_for(tmp_path, shipped)


def test_defaults_fill_missing_keys_at_every_level(tmp_path):
    params = load_params(write_params(tmp_path, "train: {optimizer: {name: adam}}\n"))
    schema = load_schema()["properties"]
    assert params["train"]["optimizer"]["name"] == "adam"
    assert params["train"]["optimizer"]["betas"] == schema["train"]["properties"]["optimizer"][
        "properties"]["betas"]["default"]
    assert params["train"]["early_stopping"]["patience"] == 3
    assert params["evaluate"]["tta"] == "flip_translate"
    assert set(params) == set(schema)


def test_sections_limit_what_is_checked_and_returned(tmp_path):
    path = write_params(tmp_path, "train: {batch_size: 0}\nevaluate: {tta: flip}\n")
    assert load_params(path, ["evaluate"]) == {"evaluate": {"batch_size": "auto", "tta": "flip"}}
    with pytest.raises(ParamsError, match="train.batch_size"):
        load_params(path, ["train"])


def test_unknown_section_is_an_error_even_when_not_read(tmp_path):
    path = write_params(tmp_path, "evaluate: {tta: none}\nevalute: {tta: flip}\n")
    with pytest.raises(ParamsError, match=r"evalute: unknown key 'evalute' \(did you mean 'evaluate'\?\)"):
        load_params(path, ["evaluate"])


def test_the_projects_params_yaml_is_valid_and_complete():
    params = load_params(REPO_ROOT / "params.yaml")
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())

    def same_keys(filled, written, where):
        assert set(filled) == set(written), f"{where}: params.yaml and the schema disagree"
        for key, value in written.items():
            if isinstance(value, dict) and value:
                same_keys(filled[key], value, f"{where}.{key}")

    same_keys(params, raw, "params.yaml")


def test_every_schema_default_is_itself_valid():
    from cnnspec.pipeline.params import check, fill_defaults

    schema = load_schema()
    check(fill_defaults({}, schema), schema, "defaults")


@pytest.mark.parametrize("stage", ["evaluate", "plot"])
def test_stage_with_bad_params_exits_2_with_one_line(tmp_path, stage):
    write_params(tmp_path, "evaluate: {batch_size: 0}\nplot: {misclassified: many}\n")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "stages" / f"{stage}.py")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "CNNSPEC_DEBUG": ""})
    key = {"evaluate": "evaluate.batch_size", "plot": "plot.misclassified"}[stage]
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: params.yaml: {key}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize("value, words", [
    ("big", "evaluate.batch_size: 'big' is not a number of images (1 or more) or auto"),
    ("0", "evaluate.batch_size: 0 is less than the minimum of 1"),
])
def test_evaluate_batch_size_is_a_number_or_auto(tmp_path, value, words):
    assert load_params(write_params(tmp_path, "evaluate: {batch_size: 64}\n"), ["evaluate"])[
        "evaluate"]["batch_size"] == 64
    with pytest.raises(ParamsError, match=re.escape(words)):
        load_params(write_params(tmp_path, f"evaluate: {{batch_size: {value}}}\n"), ["evaluate"])


def test_equally_near_spellings_are_all_offered():
    from cnnspec.spec.schema_errors import did_you_mean

    assert did_you_mean("my_seed00", ["keras_adam", "my_seed003", "my_seed000"]) == \
        " (did you mean 'my_seed000' or 'my_seed003'?)"
    assert did_you_mean("kernal", ["kernel", "filters"]) == " (did you mean 'kernel'?)"
    assert did_you_mean("xyz", ["kernel", "filters"]) == ""
