"""One-line messages for JSON Schema errors, shared by specs (spec.py) and params (params.py).

    for error in Strict(schema).iter_errors(document):
        message, about = explain(error)   # "unknown key 'filtrs' (did you mean 'filters'?)", "filtrs"

Each caller says *where* (a spec's file:line:col, params.yaml's key path); this module
says *what*: an unknown key with the closest known one, a missing key, a value that is
not one of a list, not of a type, out of range.
"""
from __future__ import annotations

import difflib
import re

import jsonschema

# JSON Schema counts 100.0 as an integer; `filters: 1e2` or `batch_size: 64.0` should not pass as one.
Strict = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool)))


# Other frameworks' names for the same function or option (Keras' layer arguments, folded),
# suggested (never substituted) when the right one is allowed where they are written.
SYNONYMS = {"swish": "silu", "hswish": "hardswish", "hsigmoid": "hardsigmoid", "linear": "identity",
            "poolsize": "kernel", "kernelsize": "kernel", "strides": "stride", "dilationrate": "dilation",
            "usebias": "bias", "kernelinitializer": "init", "kernelregularizer": "l2", "epsilon": "eps",
            "inputshape": "input"}


def folded(word) -> str:
    """`ReLU`, `hard_swish` and `Hard-Swish` all fold to one spelling for comparison."""
    return str(word).lower().replace("_", "").replace("-", "")


def did_you_mean(word, choices) -> str:
    """A hint, never a correction: the value stays an error until the user changes it.
    Same letters in another case or with other separators first, then a known synonym,
    then the closest spelling."""
    choices = [str(c) for c in choices]
    by_fold = {folded(c): c for c in choices}
    close = [by_fold.get(folded(word)) or by_fold.get(SYNONYMS.get(folded(word), ""))]
    if close[0] is None:
        close = closest(str(word), choices) or [by_fold[c] for c in closest(folded(word), list(by_fold))]
    quoted = " or ".join(f"'{choice}'" for choice in close)
    return f" (did you mean {quoted}?)" if close else ""


def closest(word: str, choices: list[str]) -> list[str]:
    """The spellings nearest to `word` (difflib's ratio, at least 0.6): one, or the two or
    three that are equally near (`my_seed00`: my_seed000 and my_seed003)."""
    near = difflib.get_close_matches(word, choices, n=3, cutoff=0.6)
    ratio = [difflib.SequenceMatcher(None, word, choice).ratio() for choice in near]
    return sorted(choice for choice, r in zip(near, ratio) if r == ratio[0])


def describe_value(value) -> str:
    """A short description of a YAML value for messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):  # as YAML writes it
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def join_key(base: str, part) -> str:
    """`train.optimizer` + `lr` -> `train.optimizer.lr`; `layers` + 3 -> `layers[3]`."""
    if isinstance(part, int):
        return f"{base}[{part}]"
    return f"{base}.{part}" if base else str(part)


def key_path(parts, base: str = "") -> str:
    for part in parts:
        base = join_key(base, part)
    return base


def unknown_key(key, known, root: dict | None = None, anywhere: bool = False) -> str:
    """`known`: the keys allowed here, or their schemas by name; with `root` (the whole
    schema, for `$ref`s) a key that belongs one level down, or that is a value of a key
    here, is pointed to: `train.lr` is `optimizer.lr`, `loss: {focal: ...}` is `name: focal`;
    `anywhere`: else a key of another section of the document (params: `evaluate.tta`)."""
    hint = value_of_a_key(key, known, root or {}) if isinstance(known, dict) else ""
    hint = hint or did_you_mean(key, known)
    if not hint and isinstance(known, dict):
        hint = key_further_down(key, known, root or {})
    if not hint and anywhere and root:  # params: `train: {tta: flip}` is evaluate.tta
        hint = key_further_down(key, root.get("properties", {}), root, depth=3)
    if not hint and folded(key) == "inputshape":
        hint = " (a spec's input is its top-level `input: {channels: 3, height: 32, width: 32}`)"
    return f"unknown key '{key}'{hint or '; expected one of: ' + ', '.join(known)}"


def value_of_a_key(word, known: dict, root: dict) -> str:
    """' (focal is a value of 'name': write name: focal)' when `word` is one of the words
    a key in `known` takes."""
    for key, schema in known.items():
        if isinstance(word, str) and word in words_of(schema, root):
            return f" ({word} is a value of '{key}': write {key}: {word})"
    return ""


# Keras' (3, 3), or 3x3; matched against the stripped text: two \s* on either side of an
# optional bracket took time quadratic in the spaces (a 1 MB spec's value, hours)
PAIR = re.compile(r"\(?\s*(\d+)\s*[x,]\s*(\d+)\s*\)?")
ALTERNATIVES = re.compile(r"^\^\(?([a-z_|]+)\)?\$$")


def words_of(schema, root: dict) -> list[str]:
    """The words an option takes: its enum, or the alternatives of a `^(same|valid)$`
    or `^num_classes$` pattern (an option that also takes numbers), through a `#/$defs/...` reference."""
    if not isinstance(schema, dict):
        return []
    if "$ref" in schema and schema["$ref"].startswith("#/$defs/"):
        schema = root.get("$defs", {}).get(schema["$ref"].rsplit("/", 1)[-1], {})
    words = [word for word in schema.get("enum") or () if isinstance(word, str)]
    match = ALTERNATIVES.match(str(schema.get("pattern", "")))
    return words + (match.group(1).split("|") if match else [])


def key_further_down(word, known: dict, root: dict, depth: int = 2) -> str:
    """' (did you mean 'optimizer.lr'?)' when `word` is a key of a section under `known`
    (at most `depth` levels down), the nearest first."""
    level = [("", known)]
    for _ in range(depth):
        below = []
        for prefix, properties in level:
            for key, schema in properties.items():
                inner = properties_of(schema, root) if isinstance(schema, dict) else {}
                if word in inner:
                    return f" (did you mean '{prefix}{key}.{word}'?)"
                below.append((f"{prefix}{key}.", inner))
        level = below
    return ""


def object_hint(instance, schema: dict, where: str) -> str:
    """For a value written where a section belongs (`scheduler: plateau`,
    `early_stopping: true`): ' (write scheduler.name: plateau)' when it fits one key."""
    properties = schema.get("properties")
    if not isinstance(properties, dict) or isinstance(instance, (dict, list)) or instance is None:
        return ""
    shown = yaml_word(instance)
    for key, sub in properties.items():
        if not isinstance(sub, dict):
            continue
        if isinstance(instance, str) and instance in (sub.get("enum") or ()):
            return f" (write {where}.{key}: {shown})"
        if isinstance(instance, bool) and sub.get("type") == "boolean" and key == "enabled":
            return f" (write {where}.{key}: {shown})"
    return ""


def yaml_word(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def properties_of(schema: dict, root: dict) -> dict:
    """The keys an object schema knows: its own `properties` and those of the
    `#/$defs/...` schemas it takes in through `allOf`."""
    known = dict(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        if "$ref" in part:
            known.update(root.get("$defs", {}).get(part["$ref"].rsplit("/", 1)[-1], {}).get("properties", {}))
    return known


def explain(error: jsonschema.ValidationError, root: dict, anywhere: bool = False) -> tuple[str, str | None] | None:
    """The message for one schema error of a document checked against `root`, and the
    key it is about when that key is not in the error's path (an unknown or a missing key).
    None for an error that only echoes another (a key reported unevaluated because a
    shared option beside it failed)."""
    rule, instance, schema = error.validator, error.instance, error.schema
    if rule in ("additionalProperties", "unevaluatedProperties") and isinstance(instance, dict):
        known = properties_of(schema, root)
        unknown = [key for key in instance if key not in known]
        if unknown:
            return unknown_key(unknown[0], known, root, anywhere), unknown[0]
        if rule == "unevaluatedProperties":
            return None
    if rule == "required":
        missing = [key for key in error.validator_value if key not in instance]
        return f"'{missing[0]}' is required", missing[0]
    if rule == "enum" and "propertyNames" in error.schema_path:
        return f"unknown key '{instance}'{did_you_mean(instance, error.validator_value)}", instance
    if rule == "not" and "propertyNames" in error.schema_path:
        reserved = ", ".join(error.validator_value.get("enum", []))
        return f"'{instance}' is reserved (not a name for this: {reserved})", instance
    if rule == "pattern" and "propertyNames" in error.schema_path:
        return f"'{instance}' is not a valid name: use letters, digits and underscores", instance
    if rule == "enum":
        choices = ", ".join(str(c) for c in error.validator_value)
        return (f"{describe_value(instance)} is not one of: {choices}"
                f"{did_you_mean(instance, error.validator_value)}", None)
    if rule in ("type", "pattern") and "x-hint" in schema:
        hint = did_you_mean(instance, words_of(schema, root)) if isinstance(instance, str) else ""
        return f"{describe_value(instance)} is not {schema['x-hint']}{hint or pair_hint(instance, schema)}", None
    if rule == "pattern" and "description" in schema:
        return f"{describe_value(instance)} is not {schema['description']}", None
    if rule == "type":
        wanted = error.validator_value
        wanted = " or ".join(wanted) if isinstance(wanted, list) else wanted
        hint = object_hint(instance, schema, key_path(error.absolute_path)) if wanted == "object" else ""
        hint = hint or pair_hint(instance, schema)
        return f"expected {wanted}, got {describe_value(instance)}{hint}", None
    if rule == "minItems" and instance == [] and schema.get("items", {}).get("$ref", "").endswith("/layer"):
        return ("an empty layer list: write at least one layer (`identity` passes the input "
                "through; only a parallel branch may be [])"), None
    if rule in ("minItems", "maxItems") and isinstance(instance, list):
        return error.message.replace(repr(instance), f"a list of {len(instance)}"), None
    if rule in ("minProperties", "maxProperties") and isinstance(instance, dict):
        return f"a layer is one TYPE: options pair, found {len(instance)} keys: {', '.join(instance)}", None
    return " ".join(error.message.split()) + percent_hint(rule, instance, error.validator_value), None


def pair_hint(instance, schema: dict) -> str:
    """For a pair written as text (`32x32`, `(3, 3)`) where a list may stand, the list to
    write; for one number where only a pair may (`image_size: 32`, as Keras and torchvision
    take one side), the square pair."""
    types = schema.get("type")
    if "array" not in (types if isinstance(types, list) else [types]):
        return ""
    if isinstance(instance, str):
        pair = PAIR.fullmatch(instance.strip())
        return f" (write [{pair.group(1)}, {pair.group(2)}])" if pair else ""
    is_integer = isinstance(instance, int) and not isinstance(instance, bool)
    if is_integer and schema.get("minItems") == schema.get("maxItems") == 2:
        return f" (write [{instance}, {instance}] for {instance}x{instance})"
    return ""


def percent_hint(rule: str, instance, bound) -> str:
    """For a fraction given as a percentage (`val_split: 10`), the fraction to write."""
    is_number = isinstance(instance, (int, float)) and not isinstance(instance, bool)
    if rule in ("maximum", "exclusiveMaximum") and bound == 1 and is_number and 1 < instance <= 100:
        return f" (a fraction: for {instance:g}% write {instance / 100:g})"
    return ""
