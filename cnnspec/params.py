"""Read params.yaml, check it against params_schema.json, fill in the defaults.

    params = load_params("params.yaml", sections=["evaluate"])
    params["evaluate"]["batch_size"]

Every stage calls `load_params` first, so a typo stops the pipeline before any
work is done, with one line that names the key:

    params.yaml: train.batch_size: 0 is less than the minimum of 1
    params.yaml: train.optimzer: unknown key (did you mean 'optimizer'?)
"""
from __future__ import annotations

import copy
import difflib
import json
import re
from pathlib import Path

import jsonschema
import yaml

from cnnspec.errors import ParamsError

SCHEMA_PATH = Path(__file__).with_name("params_schema.json")


def load_params(path="params.yaml", sections=None) -> dict:
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
            raise ParamsError(f"{name}: {key}: {unknown_key_hint(key, known_sections)}")

    chosen = {section: params.get(section, {}) for section in sections}
    chosen = {section: _yaml11_spellings(section, value) for section, value in chosen.items()}
    sub_schema = {**schema, "properties": {s: schema["properties"][s] for s in sections}}
    check(chosen, sub_schema, name)
    return fill_defaults(chosen, sub_schema)


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


# --- reading ---------------------------------------------------------------

def read_yaml_mapping(path) -> dict:
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{name}: file not found (stages read it from the directory they run in)")
    except (OSError, UnicodeDecodeError) as error:
        raise ParamsError(f"{name}: cannot read: {error}")
    data = parse_yaml(text, name)
    if not isinstance(data, dict):
        found = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ParamsError(f"{name}: expected a mapping of sections (data, model, train, ...), found {found}")
    return data


def parse_yaml(text: str, name: str):
    """Parse with the project's loader (cnnspec/yamlio.py) when it offers a plain
    loader, else with `_ParamsLoader`; both read 1e-4 as a number."""
    try:
        return _project_loader()(text, name)
    except yaml.YAMLError as error:
        raise ParamsError(f"{_where(name, error)}: invalid YAML: {_yaml_problem(error)}")


def _project_loader():
    try:
        from cnnspec import yamlio
    except ImportError:
        return _load_with_safe_loader
    return getattr(yamlio, "load_plain", None) or _load_with_safe_loader


def _load_with_safe_loader(text: str, name: str):
    return yaml.load(text, Loader=_ParamsLoader)  # _ParamsLoader is a yaml.SafeLoader


class _ParamsLoader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float (YAML 1.2 does, PyYAML's 1.1 rules
    do not) and refuses duplicate keys instead of keeping the last one."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_FLOAT_WITHOUT_DOT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_WITHOUT_DOT,
                                    list("-+0123456789"))


def _where(name: str, error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    return f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name


def _yaml_problem(error: yaml.YAMLError) -> str:
    problem = getattr(error, "problem", None) or str(error)
    return " ".join(problem.split())


def _yaml11_spellings(section: str, value):
    """YAML 1.1 reads `precision: off` as False; the schema's word is "off"."""
    if section == "train" and isinstance(value, dict) and value.get("precision") is False:
        return {**value, "precision": "off"}
    return value


# --- checking --------------------------------------------------------------

def _is_integer(checker, instance) -> bool:
    # JSON Schema calls 10.0 an integer; range(10.0) disagrees.
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


def check(params: dict, schema: dict, name: str) -> None:
    """Raise ParamsError for the first problem, in key order."""
    errors = sorted(_Validator(schema).iter_errors(params), key=_error_order)
    if errors:
        raise ParamsError(f"{name}: {describe(errors[0])}")


def _error_order(error):
    return [str(part) for part in error.absolute_path]


def describe(error: jsonschema.ValidationError) -> str:
    """`key.path: message` for one schema error."""
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        extra = sorted(key for key in error.instance if key not in allowed)
        if extra and isinstance(error.schema.get("additionalProperties"), bool):
            key = key_path(list(error.absolute_path) + [extra[0]])
            return f"{key}: {unknown_key_hint(extra[0], allowed)}"
    key = key_path(error.absolute_path) or "(top level)"
    if error.validator == "pattern" and "description" in error.schema:
        return f"{key}: {error.instance!r} is not {error.schema['description']}"
    return f"{key}: {' '.join(error.message.split())}"


def key_path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def unknown_key_hint(key, allowed) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (expected one of: {', '.join(allowed)})"


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
