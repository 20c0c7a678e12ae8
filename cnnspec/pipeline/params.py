"""Read params.yaml, check it against params_schema.json, fill in the defaults.

    params = load_stage_params(PARAMS, sections=["data"])
    params = load_resolved_params(PARAMS, sections=["evaluate"])   # train and evaluate (resolved.py)
    params["evaluate"]["batch_size"]

Every stage calls `load_stage_params` or `load_resolved_params` first (`load_params`,
then `check_named_paths`), so a typo or a misspelt path stops the pipeline before any
work is done, with one line that names the key:

    params.yaml: train.batch_size: 0 is less than the minimum of 1
    params.yaml: train.optimzer: unknown key 'optimzer' (did you mean 'optimizer'?)
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from cnnspec.errors import ParamsError, SpecError
from cnnspec.paths import MODEL, PARAMS, RAW, path_problem
from cnnspec.pipeline import recipes
from cnnspec.spec import yamlio
from cnnspec.spec.schema_errors import Strict, explain, key_path, unknown_key

SCHEMA_PATH = Path(__file__).with_name("params_schema.json")


def load_params(path=PARAMS, sections=None) -> dict:
    """Return params.yaml as a dict, validated and with defaults filled in.

    `sections` (e.g. ["train", "model"]) limits the check to the sections a stage
    reads, and the result to those sections; an unknown top-level section is an
    error either way. Raises ParamsError (exit code 2) with one line.
    """
    schema = load_schema()
    known_sections = list(schema["properties"])
    sections = known_sections if sections is None else list(sections)
    for section in sections:
        if section not in known_sections:
            raise ValueError(f"no params section {section!r}; known: {known_sections}")

    name = str(path)
    params = read_yaml_mapping(path)
    for key in params:
        if key not in known_sections:
            raise ParamsError(f"{name}: {key}: {unknown_key(key, schema['properties'], schema)}")
    params = with_auto_spec(params)

    origin, layers = {}, []
    if set(sections) & {"recipe", *recipes.SECTIONS}:  # only these read the recipe
        params, _, origin, layers = recipes.apply(params, name, schema, path)
    chosen = {section: params.get(section, schema["properties"][section].get("default", {}))
              for section in sections}
    chosen = {section: _yaml11_spellings(section, value) for section, value in chosen.items()}
    sub_schema = sections_schema(schema, sections)
    check(chosen, sub_schema, name, lambda key_path: recipes.origin_of(origin, key_path))
    filled = fill_defaults(chosen, sub_schema)
    recipes.check_switches(layers, filled)
    if "model" in filled:  # layer types from the user's code, before any spec is read
        from cnnspec.spec.plugins import load_plugins

        load_plugins(filled["model"].get("plugins"))
    return filled


def load_workspace_plugins(path=PARAMS) -> list:
    """Import the plugins this workspace's params name (model.plugins): the stages that
    open a checkpoint call this, since a checkpoint itself never imports code."""
    return load_params(path, ["model"])["model"].get("plugins") or []


def load_stage_params(path=PARAMS, sections=None) -> dict:
    """`load_params`, then `check_named_paths` on what it returned: what every stage
    does first, before it imports torch or reads any data."""
    params = load_params(path, sections)
    check_named_paths(params, str(path))
    return params


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def sections_schema(schema: dict, sections: list[str]) -> dict:
    """The params schema narrowed to `sections` (what a stage reads)."""
    return {**schema, "properties": {section: schema["properties"][section] for section in sections}}


# --- model.spec: auto ------------------------------------------------------

# What `model.spec: auto` means: the CIFAR speedrun for the built-in datasets (what their
# benchmarks use), a small batch-normed CNN for the user's own images, which are often a
# few hundred of any size and channel count (specs/small_images.yaml says why).
AUTO_SPEC_BUILTIN = "specs/speedrun94.yaml"
AUTO_SPEC_OWN_IMAGES = "specs/small_images.yaml"
OWN_IMAGE_DATASETS = ("folder", "csv")  # cnnspec.data.datasets.USER_DATASETS, without numpy


def auto_spec(dataset) -> str:
    """The spec `model.spec: auto` stands for with `data.dataset: dataset`: the one in
    ./specs/ if there is one (a checkout), else the copy shipped with cnnspec."""
    chosen = AUTO_SPEC_OWN_IMAGES if dataset in OWN_IMAGE_DATASETS else AUTO_SPEC_BUILTIN
    if Path(chosen).is_file():
        return chosen
    shipped = recipes.SHIPPED.parent / chosen
    return str(shipped) if shipped.is_file() else chosen


def with_auto_spec(params: dict) -> dict:
    """`params` with `model.spec: auto` replaced by the spec it stands for."""
    model = params.get("model")
    if not isinstance(model, dict) or model.get("spec") != "auto":
        return params
    data = params.get("data") if isinstance(params.get("data"), dict) else {}
    return {**params, "model": {**model, "spec": auto_spec(data.get("dataset", "cifar10"))}}


# --- reading ---------------------------------------------------------------

def read_yaml_mapping(path) -> dict:
    name = str(path)
    if not os.path.lexists(path):
        raise ParamsError(f"{name}: file not found (stages read it from the directory they run in)")
    try:
        text = yamlio.read_bounded_text(path)  # a FIFO or a huge file: refused before reading
    except SpecError as error:
        raise ParamsError(str(error)) from None
    data = parse_yaml(text, name)
    if not isinstance(data, dict):
        found = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ParamsError(f"{name}: expected a mapping of sections (data, model, train, ...), found {found}")
    return data


def parse_yaml(text: str, name: str):
    """Parse with the project's loader (1e-4 is a number, duplicate keys are
    refused) and hand back plain dicts and lists, fit for a checkpoint."""
    try:
        return yamlio.plain(yamlio.load_yaml(text, name))
    except SpecError as error:
        raise ParamsError(str(error)) from None


OFF_WORD_KEYS = ("precision", "cpu_precision")  # train keys whose schema word "off" YAML 1.1 reads as False


def _yaml11_spellings(section: str, value):
    """YAML 1.1 reads `precision: off` (and `-S train.cpu_precision=off`, which DVC writes
    unquoted) as False; the schema's word is "off"."""
    if section == "train" and isinstance(value, dict):
        return {**value, **{key: "off" for key in OFF_WORD_KEYS if value.get(key) is False}}
    return value


# --- checking --------------------------------------------------------------

def check(params: dict, schema: dict, name: str, origin_of=lambda key_path: None) -> None:
    """Raise ParamsError for the first problem, in key order; a value that came from
    a recipe is named by its recipe file and line (`origin_of`)."""
    errors = sorted(Strict(schema).iter_errors(params), key=_error_order)
    if errors:
        _, about = explain(errors[0], schema, anywhere=True)
        path = list(errors[0].absolute_path) + ([about] if about is not None else [])
        origin = origin_of(path)
        hint = empty_value_hint(errors[0].instance, path) if origin is None else ""
        raise ParamsError(f"{origin or name}: {describe_error(errors[0], schema)}{hint}")


def empty_value_hint(value, path: list) -> str:
    """For '' in train or evaluate (what `-S train.optimizer.lr=` writes, meant as "back to
    the recipe's value"): how to write the empty value that means it."""
    if value != "" or not path or path[0] not in recipes.SECTIONS:
        return ""
    key = key_path(path)
    return f" (for the recipe's value leave it empty: -S {key}=null, or nothing after `{path[-1]}:`)"


def _error_order(error):
    return [str(part) for part in error.absolute_path]


def describe_error(error, schema: dict) -> str:
    """`key.path: message` for one schema error."""
    message, about = explain(error, schema, anywhere=True)
    parts = list(error.absolute_path) + ([about] if about is not None else [])
    return f"{key_path(parts) or '(top level)'}: {message}"


# --- defaults --------------------------------------------------------------

def fill_defaults(params: dict, schema: dict) -> dict:
    """A copy of `params` with every missing key set to its schema default,
    nested sections included."""
    filled = copy.deepcopy(params)
    for key, sub_schema in schema.get("properties", {}).items():
        if key not in filled and "default" in sub_schema:
            filled[key] = copy.deepcopy(sub_schema["default"])
        if isinstance(filled.get(key), dict) and "properties" in sub_schema:
            filled[key] = fill_defaults(filled[key], sub_schema)
    return filled


# --- params that name files ------------------------------------------------

# Every param whose value is a path on disk, with what must be there. A stage checks
# them in `load_stage_params`, right after `load_params`, before it reads any data, so a
# misspelt path is reported with its key instead of after the data was loaded.
# "" or null means the param is not used. Keys of sections not loaded are skipped.
NAMED_PATHS = {
    "model.spec": "file",
    "train.init_from": "file",
}


def check_user_source(data: dict, name=str(PARAMS)) -> None:
    """For a folder or csv dataset, ParamsError when data.source is not the folder or the
    CSV file it must be. The download stage checks it too: under `dvc repro` it runs
    first, so a misspelt source is named with its key instead of by DVC's missing
    dependency of preprocess."""
    kind = "folder" if data["dataset"] == "folder" else "file"  # csv: the manifest
    if Path(str(data["source"])) == RAW:
        wanted = "your images' folder" if kind == "folder" else "your CSV manifest"
        raise ParamsError(f"{name}: data.source: still {RAW}, the built-in datasets' download folder; "
                          f"set it to {wanted} (-S data.source=...)")
    source = Path(str(data["source"]))
    problem = path_problem(source, kind)
    if problem:
        raise ParamsError(f"{name}: data.source: {recipes.printable(data['source'])}: {problem}"
                          f"{source_hint(source, kind)}")


def source_hint(source: Path, kind: str) -> str:
    """What a newcomer most likely meant by a data.source that is not there or not of its
    kind: the same name under data/ (the README puts images there; paths are relative to
    the repository root), or the other of folder and csv."""
    if kind == "folder" and source.is_file():
        return " (a CSV manifest is read with -S data.dataset=csv)" if source.suffix.lower() == ".csv" else ""
    if kind == "file" and source.is_dir():
        return " (a folder of class folders is read with -S data.dataset=folder)"
    under_data = Path("data") / source
    if not source.exists() and not source.is_absolute() and path_problem(under_data, kind) is None:
        return f" (-S data.source={under_data.as_posix()}? paths are relative to the repository root)"
    return ""


def check_named_paths(params: dict, name=str(PARAMS), keys=None) -> None:
    """Raise ParamsError for the first param in NAMED_PATHS (or `keys`) whose value
    does not name an existing, readable file (or folder, as the registry says).

        params.yaml: model.spec: specs/does_not_exist.yaml: no such file
    """
    for key in NAMED_PATHS if keys is None else keys:
        kind = NAMED_PATHS[key]
        section, _, rest = key.partition(".")
        value = params.get(section, {})
        for part in rest.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value in (None, ""):
            continue
        problem = own_output_problem(key, value) or path_problem(Path(str(value)), kind)
        if problem:
            raise ParamsError(f"{name}: {key}: {recipes.printable(value)}: {problem}")


def own_output_problem(key: str, value) -> str | None:
    """train.init_from naming models/model.pt, the train stage's own output: DVC removes
    it before the stage runs, so the run would stop at `no such file` with it gone."""
    if key != "train.init_from" or Path(str(value)).resolve() != MODEL.resolve():
        return None
    return (f"is the train stage's output, which DVC removes before the stage runs; copy it first "
            f"(cp {MODEL} models/base.pt) and start from the copy (docs/finetune.md)")
