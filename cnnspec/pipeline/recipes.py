"""Recipes: named training presets in `recipes/NAME.yaml`, merged under params.yaml.

A recipe holds the `train` and `evaluate` knobs that belong together (optimizer,
schedule, loss, augmentation, batch size, epochs, lookahead/EMA, precision, TTA).
params.yaml picks one with its top-level `recipe` key:

    recipe: auto          # the recipe the spec names (`recipe: keras_adam` in the spec),
                          # else DEFAULT_RECIPE
    recipe: airbench      # a file recipes/airbench.yaml
    recipe: none          # no recipe: params.yaml and the schema's defaults only

The effective params are, from weakest to strongest: the schema's defaults, the
recipe (a recipe may start from another with `base: NAME`), then every value that
params.yaml sets. A key params.yaml writes as `null` (`~`) takes the recipe's value;
params.yaml keeps every key so that `dvc exp run -S train.batch_size=64` finds it.
Settings of a section that stays off (`early_stopping: {patience: 3}` under an
`enabled: false`) are refused where they are written (check_switches).

Recipes are looked up in `recipes/` of the working directory, then beside the
params file, then the ones shipped with cnnspec; the first file found wins.
"""
from __future__ import annotations

import copy
import difflib
import json
import re
from pathlib import Path

from cnnspec.errors import ParamsError, SpecError
from cnnspec.paths import PARAMS, path_problem
from cnnspec.spec import yamlio

DEFAULT_RECIPE = "keras_adam"   # for a spec that names none: Adam 1e-3 trains most CNNs
SECTIONS = ("train", "evaluate")   # what a recipe may set; data.* stays in params.yaml
# Where, on what and from what a run happens, not how it trains: params.yaml gives each a
# value (not null), which would always win over a recipe's, so a recipe may not set them.
RUN_KEYS = {"train": ("device", "devices", "backend", "sync_bn", "seed", "deterministic", "init_from",
                      "unfreeze"),
            "evaluate": ("batch_size",)}
SHIPPED = Path(__file__).resolve().parents[2] / "recipes"
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
MAX_BASES = 16
# Recipes once named after the seed report they reproduce, now after what they are
# (docs/recipes.md keeps the provenance). An old name is refused with its new one.
RENAMED = {
    "seed000_cnn": "adam_plateau_early_stop",
    "seed000_resnet18": "adam_early_stop",
    "seed002_fan": "adam_30_epochs",
    "seed002_resnet50v2": "adam_3_epochs",
    "seed003": "adam_focal_balanced",
    "seed003_cifar10": "adam_focal_balanced_cats_dogs",
    "seed004_resnet50": "adam_15_epochs",
}


def recipe_dirs(params_path=None) -> list[Path]:
    dirs = [Path("recipes")]
    if params_path is not None:
        dirs.append(Path(params_path).resolve().parent / "recipes")
    dirs.append(SHIPPED)
    unique = []
    for folder in dirs:
        if folder.resolve() not in [d.resolve() for d in unique]:
            unique.append(folder)
    return unique


def available(params_path=None) -> list[str]:
    names = set()
    for folder in recipe_dirs(params_path):
        names.update(path.stem for path in folder.glob("*.yaml"))
    return sorted(names)


def find_recipe(name: str, asked_where: str, params_path=None) -> Path:
    """The file of recipe `name`; ParamsError naming `asked_where` if there is none."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ParamsError(f"{asked_where}: {name!r} is not a recipe name (letters, digits, _ . -)")
    for folder in recipe_dirs(params_path):
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path
    if name in RENAMED:
        raise ParamsError(f"{asked_where}: recipe {name!r} is now called {RENAMED[name]!r}")
    names = available(params_path)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(names) or 'none'}"
    raise ParamsError(f"{asked_where}: no recipe {name!r} in recipes/{hint}")


def printable(value) -> str:
    """A path as a one-line message shows it: as written, or quoted when it holds a
    newline or another control character."""
    text = str(value)
    return text if text.isprintable() else repr(text)


def spec_recipe(spec_path, params_path=None, name=str(PARAMS)) -> tuple[str | None, str]:
    """The `recipe:` a spec file names (None if it names none) and where it is written."""
    path = Path(spec_path)
    if not path.is_file() and params_path is not None:
        beside = Path(params_path).resolve().parent / spec_path
        path = beside if beside.is_file() else path
    shown = printable(spec_path)
    if path.is_dir() or not (path.exists() or path.is_symlink()):  # as check_named_paths words them
        raise ParamsError(f"{name}: model.spec: {shown}: {path_problem(path, 'file')}")
    try:  # bounded: a FIFO or a huge file is refused before it is read
        document = yamlio.load_yaml(yamlio.read_bounded_text(path), shown)
    except SpecError as error:
        if error.line is not None:  # inside the spec: its own file:line:col says where
            raise ParamsError(str(error)) from None
        raise ParamsError(f"{name}: model.spec: {shown}: {error.message}") from None
    if not isinstance(document, dict) or "recipe" not in document:
        return None, str(spec_path)
    where = document.where_of("recipe")
    return document["recipe"], f"{spec_path}:{where.line}:{where.col}: recipe"


def read_recipe(path: Path) -> yamlio.LocatedDict:
    name = str(path)
    try:
        document = yamlio.load_mapping(yamlio.read_bounded_text(path), name, "recipe")
    except SpecError as error:
        raise ParamsError(str(error)) from None
    for key in document:
        if key != "base" and key not in SECTIONS:
            where = document.key_where.get(key) or document.where
            raise ParamsError(f"{name}:{where.line}:{where.col}: {key}: a recipe holds only "
                              f"base, {', '.join(SECTIONS)} (data and model stay in params.yaml)"
                              f"{section_of(key)}")
        section = document[key]
        for run_key in RUN_KEYS.get(key, ()):
            if isinstance(section, dict) and run_key in section:
                where = section.key_where.get(run_key) or document.where
                raise ParamsError(f"{name}:{where.line}:{where.col}: {key}.{run_key}: set in params.yaml, "
                                  f"not in a recipe (it says where and from what a run happens, not how it "
                                  f"trains; params.yaml's value would win)")
    return document


def section_of(key) -> str:
    """'; early_stopping belongs under train:' for a train or evaluate key written at the
    top of a recipe."""
    schema = json.loads(Path(__file__).with_name("params_schema.json").read_text(encoding="utf-8"))
    for section in SECTIONS:
        if key in schema["properties"][section].get("properties", {}):
            return f"; {key} belongs under {section}: (indent it below `{section}:`)"
    return ""


def chain(name: str, asked_where: str, params_path=None) -> list[tuple[Path, yamlio.LocatedDict]]:
    """The recipe and its bases, base first."""
    found, seen = [], []
    while name is not None:
        if name in seen:
            raise ParamsError(f"{asked_where}: recipe bases loop: {' -> '.join(seen + [name])}")
        if len(seen) >= MAX_BASES:
            raise ParamsError(f"{asked_where}: more than {MAX_BASES} recipe bases")
        seen.append(name)
        path = find_recipe(name, asked_where, params_path)
        document = read_recipe(path)
        found.append((path, document))
        base = document.get("base")
        if base is not None:
            where = document.where_of("base")
            asked_where = f"{path}:{where.line}:{where.col}: base"
        name = base
    return list(reversed(found))


def choose(params: dict, name: str, params_path=None) -> tuple[str | None, str]:
    """The recipe's name (None for `none`) and where that choice is written."""
    choice = params.get("recipe", "none")
    if not isinstance(choice, str):
        raise ParamsError(f"{name}: recipe: expected a recipe name, auto or none, not "
                          f"{yamlio.describe_scalar(choice)}")
    if choice == "none":
        return None, f"{name}: recipe"
    if choice != "auto":
        return choice, f"{name}: recipe"
    model = params.get("model")
    spec = model.get("spec") if isinstance(model, dict) else None
    if not spec or not isinstance(spec, str):  # the schema check names a bad model section
        return DEFAULT_RECIPE, f"{name}: recipe"
    named, where = spec_recipe(spec, params_path, name)
    return (named or DEFAULT_RECIPE), (where if named else f"{name}: recipe")


def drop_nulls(value):
    """params.yaml without its `null`s: a null key takes the recipe's value."""
    if isinstance(value, dict):
        return {key: drop_nulls(item) for key, item in value.items() if item is not None}
    return value


def merge(under: dict, over: dict, schema: dict, origin: dict, source, prefix=()) -> dict:
    """`over` on top of `under`, section by section; a mapping the schema treats as one
    value (class_weights.multipliers) is replaced, not merged. `origin` records `source`
    (a recipe's (file, document), or None for params.yaml) for each key path `over` sets."""
    result = dict(under)
    properties = schema.get("properties", {}) if isinstance(schema, dict) else {}
    for key, value in over.items():
        path = prefix + (key,)
        sub_schema = properties.get(key, {})
        if isinstance(value, dict) and isinstance(result.get(key), dict) and "properties" in sub_schema:
            result[key] = merge(result[key], value, sub_schema, origin, source, path)
        elif isinstance(value, dict) and result.get(key) is not None and "properties" in sub_schema:
            continue  # `scheduler: plateau` below a section: kept for the check to name where it is written
        else:
            result[key] = copy.deepcopy(value)
            for stale in [p for p in origin if p[:len(path)] == path]:
                del origin[stale]
            origin[path] = source
    return result


def located(document, path) -> str:
    """`line:col` of a key path in a located document, '' if unknown."""
    node, where = document, None
    for part in path:
        if not isinstance(node, dict) or part not in node:
            break
        where = node.where_of(part)
        node = node[part]
    return f":{where.line}:{where.col}" if where is not None and where.line else ""


def apply(params: dict, name: str, schema: dict, params_path=None) -> tuple[dict, str | None, dict, list]:
    """(effective params, recipe name or None, origins for `origin_of`, the layers for
    `check_switches`: each recipe, base first, then params.yaml). The result is not yet
    validated; its `recipe` is the name used ("none" for none)."""
    recipe, asked_where = choose(params, name, params_path)
    origin: dict = {}
    effective = {}
    layers = []
    if recipe is not None:
        for path, document in chain(recipe, asked_where, params_path):
            body = {key: yamlio.plain(document[key]) for key in SECTIONS if key in document}
            effective = merge(effective, body, schema, origin, (path, document))
            layers.append((body, lambda key_path, path=path, document=document:
                           f"{path}{located(document, key_path)}"))
    own = {key: drop_nulls(value) if key in SECTIONS else value
           for key, value in params.items() if key != "recipe"}
    effective = merge(effective, own, schema, origin, None)
    layers.append((own, lambda key_path: name))
    effective["recipe"] = recipe or "none"
    return effective, recipe, origin, layers


# Sections whose other keys do nothing while one key leaves them off: (the switch, the
# value that turns them off, the keys it silences (None: every other key), what to write
# to turn them on). Keras turns early stopping on by adding the callback with its
# settings, so a recipe that writes `patience: 3` without `enabled: true` most likely
# means it on.
SWITCHES = {
    ("train", "early_stopping"): ("enabled", False, None, "enabled: true"),
    ("train", "lookahead"): ("enabled", False, None, "enabled: true"),
    ("train", "ema"): ("enabled", False, None, "enabled: true"),
    ("train", "scheduler"): ("name", "none", None, "name: plateau (step, cosine, ...)"),
    ("train", "loss"): ("name", "cross_entropy", ("gamma", "alpha"), "name: focal"),
}


def check_switches(layers, effective: dict) -> None:
    """Refuse settings that the run would ignore because their section stays off: the
    last recipe (or params.yaml) that sets them without saying `enabled` (`name`) leaves
    an earlier `enabled: false` in force. Saying the switch either way is a choice.
    `effective` is validated, with its defaults filled in."""
    for section, (switch, off, silenced, turn_on) in SWITCHES.items():
        if value_at(effective, (*section, switch)) != off:
            continue
        unswitched, switched_at = settings_set_without_their_switch(layers, section, switch, silenced)
        if unswitched is None:
            continue
        keys, where = unswitched
        dotted = ".".join(section)
        it_is, it = ("it is", "it") if len(keys) == 1 else ("they are", "them")
        keep_off = " (or enabled: false to keep it off)" if switch == "enabled" else ""
        shown = str(off).lower() if isinstance(off, bool) else off
        raise ParamsError(f"{where}: {dotted}: {', '.join(keys)}: {it_is} set, but {dotted}.{switch} is "
                          f"{shown} (from {switched_at}), so the run would ignore {it}; "
                          f"write {turn_on} to use {it}{keep_off}")


def settings_set_without_their_switch(layers, section: tuple, switch: str, silenced):
    """((keys, where) or None, where the switch was last written): the keys of `section`
    that the last layer to write any of them wrote without its switch, None when a later
    layer (or that one) writes the switch."""
    unswitched, switched_at = None, "the schema's default"
    for body, where in layers:
        written = value_at(body, section)
        if not isinstance(written, dict):
            continue
        if switch in written:
            unswitched, switched_at = None, where((*section, switch))
            continue
        keys = [key for key in written if key != switch and (silenced is None or key in silenced)]
        if keys:
            unswitched = (keys, where(section))
    return unswitched, switched_at


def value_at(mapping, key_path):
    """mapping[a][b]... for key_path (a, b, ...), or None where a level is missing."""
    for key in key_path:
        mapping = mapping.get(key) if isinstance(mapping, dict) else None
    return mapping


def origin_of(origin: dict, key_path) -> str | None:
    """'recipes/x.yaml:12:5' when the value at `key_path` came from a recipe, else None."""
    key_path = tuple(key_path)
    for length in range(len(key_path), 0, -1):
        if key_path[:length] in origin:
            source = origin[key_path[:length]]
            if source is None:
                return None
            path, document = source
            return f"{path}{located(document, key_path)}"
    return None
