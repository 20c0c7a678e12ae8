"""params.resolved.yaml, what the train and evaluate stages run with: the resolve stage
writes it (params.yaml over its recipe, the batch fitted to the prepared data) with a
stamp of everything it was computed from, and DVC tracks it as their params.

    params = load_resolved_params(PARAMS, sections=["evaluate"])
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cnnspec.data.integrity import well_formed
from cnnspec.errors import ParamsError, SpecError
from cnnspec.paths import PARAMS, PREPARED, RESOLVE_HINT, RESOLVED_PARAMS
from cnnspec.pipeline.fit import fit_to_data
from cnnspec.pipeline.params import (
    check,
    check_named_paths,
    load_params,
    load_schema,
    read_yaml_mapping,
    sections_schema,
)
from cnnspec.regular_files import not_a_regular_file, read_json
from cnnspec.spec import yamlio

RESOLVED_SECTIONS = ["recipe", "model", "train", "evaluate"]  # what the resolve stage writes
STAMP = "# resolved from: "


def resolution_stamp(params: dict, prepared=PREPARED) -> str:
    """A digest of everything params.resolved.yaml is computed from: `params` as
    load_params resolves them (params.yaml over its recipe, all of RESOLVED_SECTIONS), the
    spec file they name and the prepared data's meta.json (the batch size is fitted to it).
    The resolve stage writes it into the file; a stage that finds another one knows the
    file is out of date."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for source in (Path(str(params["model"]["spec"])), Path(prepared) / "meta.json"):
        try:
            digest.update(yamlio.read_bounded_text(source).encode())
        except SpecError:  # missing, not a regular file or too large: the stage names it
            digest.update(b"(none)")
    return digest.hexdigest()


def load_resolved_params(path=PARAMS, sections=None, say=print, prepared=PREPARED) -> dict:
    """What the train and evaluate stages run with: params.resolved.yaml beside `path`,
    the file the resolve stage writes and DVC tracks as their params, so the values DVC
    shows are the values used. Its stamp must match what `path`, its recipe, the spec and
    the prepared data give now; when the file is missing or out of date (a stage run alone
    after an edit), the params resolved here are used instead and one line through `say`
    says so. A current file's values are checked against the schema like params.yaml's
    (it is in git and may be edited by hand). Then `check_named_paths`, as in load_stage_params."""
    current = load_params(path, RESOLVED_SECTIONS)
    wanted = sections or RESOLVED_SECTIONS
    resolved_path = Path(path).with_name(RESOLVED_PARAMS.name)
    written = _written_sections(resolved_path, wanted)
    if written is None:
        say(f"note: {resolved_path} is missing, so {path} and its recipe are resolved here; "
            f"{RESOLVE_HINT} to write it")
    elif _stamp_of(resolved_path) != resolution_stamp(current, prepared) or set(written) != set(wanted):
        say(f"note: {resolved_path} is older than {path}, its recipe, the spec or the prepared data, "
            f"so they are resolved here; {RESOLVE_HINT} to update it")
        written = None
    if written is not None:  # a file in git may have been edited by hand: its values are checked too
        check(written, sections_schema(load_schema(), wanted), str(resolved_path))
    params = written if written is not None else _resolved_here(current, wanted, path, prepared)
    check_named_paths(params, str(path))
    return params


def prepared_meta(prepared=PREPARED) -> dict | None:
    """meta.json of the prepared data, or None before preprocess has run (or when it is
    not a readable JSON object: the stage that reads the data names what is wrong). A key
    this stage reads whose value is not of the documented form is left out, likewise."""
    try:
        meta = read_json(Path(prepared) / "meta.json")
    except ValueError:
        return None
    if not isinstance(meta, dict):
        return None
    return {key: value for key, value in meta.items() if well_formed(key, value)}


def prepared_train_images(meta: dict | None) -> int | None:
    """The training images meta.json counts, or None without them."""
    counts = meta.get("counts") if meta is not None else None
    return counts.get("train") if isinstance(counts, dict) else None


def _resolved_here(current: dict, sections: list[str], path, prepared) -> dict:
    """What the resolve stage would write for `sections`: `current` (params.yaml over its
    recipe), with the batch size fitted to the prepared training set when there is one."""
    params = {section: current[section] for section in sections}
    train_images = prepared_train_images(prepared_meta(prepared)) if "train" in params else None
    if train_images:
        params["train"] = fit_to_data(params["train"], train_images, path)
    return params


def _stamp_of(path: Path) -> str | None:
    if not_a_regular_file(path):
        return None
    try:
        with open(path, encoding="utf-8") as file:
            for line in file:
                if line.startswith(STAMP):
                    return line[len(STAMP):].strip()
                if not line.startswith("#"):
                    return None
    except (OSError, UnicodeDecodeError):
        return None
    return None


def _written_sections(path: Path, sections: list[str]):
    """`sections` of a resolved params file, as written; None when it is missing.
    A file that does not parse, or lacks one of them, reads as out of date ({})."""
    if not path.is_file():
        return None
    try:
        written = read_yaml_mapping(path)
    except ParamsError:
        return {}
    return {section: written[section] for section in sections if section in written}
