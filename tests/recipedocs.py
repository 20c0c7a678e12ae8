"""The `dvc exp run` commands of docs/recipes.md, read as bash and DVC read them: one
entry per experiment (a sweep gives several), and params.yaml after its `-S` overrides."""
from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from cnnspec.pipeline.params import load_params

REPO = Path(__file__).resolve().parent.parent
RECIPES_DOC = REPO / "docs" / "recipes.md"
PARAMS = REPO / "params.yaml"


# ---------------------------------------------------------------- reading the doc

def code_blocks(markdown: str) -> list[tuple[int, str]]:
    """(first line number, text) of every fenced code block."""
    blocks, lines, start, inside = [], markdown.splitlines(), 0, False
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            if inside:
                blocks.append((start, "\n".join(lines[start:number - 1])))
            inside, start = not inside, number
    return blocks


def shell_words(command: str) -> list[str]:
    """The arguments bash would hand `dvc` for this command line."""
    script = 'dvc() { printf "%s\\0" "$@"; }\n' + command
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return out.stdout.split("\0")[:-1]


def exp_run_commands(markdown: str) -> list[tuple[int, str]]:
    """(line, command text) of every `dvc exp run` command, continuation lines joined."""
    commands = []
    for start, block in code_blocks(markdown):
        pending, first = "", 0
        for number, line in enumerate(block.splitlines(), start + 1):
            first = first or number
            pending += line.rstrip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            if pending.strip().startswith("dvc exp run"):
                commands.append((first, pending.strip()))
            pending, first = "", 0
    return commands


def parse_exp_run(words: list[str]) -> argparse.Namespace:
    """The `dvc exp run` options these recipes may use; anything else is an error."""
    assert words[:2] == ["exp", "run"], words
    parser = argparse.ArgumentParser(prog="dvc exp run", add_help=False, exit_on_error=False)
    parser.add_argument("-n", "--name")
    parser.add_argument("-S", "--set-param", dest="set_param", action="append", default=[])
    parser.add_argument("--queue", action="store_true")
    options, unknown = parser.parse_known_args(words[2:])
    if unknown:
        raise ValueError(f"unexpected arguments {unknown}")
    return options


def load_recipes() -> list[dict]:
    """One entry per experiment the doc's commands would run (a sweep gives several)."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps, to_hydra_overrides

    recipes = []
    for line, command in exp_run_commands(RECIPES_DOC.read_text(encoding="utf-8")):
        words = shell_words(command)
        options = parse_exp_run(words)
        name = options.name or f"line {line}"
        path_overrides = to_path_overrides(options.set_param)
        is_sweep = any(o.is_sweep_override() for o in to_hydra_overrides(path_overrides.get("params.yaml", [])))
        sweeps = get_hydra_sweeps(path_overrides) if is_sweep else [path_overrides]
        for index, sweep in enumerate(sweeps, 1):
            recipes.append({"name": f"{name}-{index}" if is_sweep else name, "line": line,
                            "options": options, "overrides": sweep, "sweep": is_sweep})
    return recipes


def spec_override(recipe) -> str | None:
    """The recipe's `-S model.spec=...` value, if it sets one."""
    for override in recipe["overrides"].get("params.yaml", []):
        if override.startswith("model.spec="):
            return override.split("=", 1)[1]
    return None


RECIPES = load_recipes() if RECIPES_DOC.is_file() else []


# ---------------------------------------------------------------- applying one recipe

def has_key(params: dict, dotted: str) -> bool:
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def applied_params(recipe: dict, folder: Path) -> dict:
    """params.yaml after the recipe's overrides, as DVC writes it, read by load_params."""
    from dvc.utils.hydra import apply_overrides, to_hydra_overrides

    name, overrides = recipe["name"], recipe["overrides"]
    assert set(overrides) <= {"params.yaml"}, f"{name}: -S may only edit params.yaml, not {sorted(overrides)}"
    original = load_params(PARAMS)
    for override in to_hydra_overrides(overrides.get("params.yaml", [])):
        key = override.key_or_group
        assert not override.is_delete(), f"{name}: deletes {key}"
        assert has_key(original, key), f"{name}: -S {override.input_line}: {key} is not a key of params.yaml"
    copy = folder / "params.yaml"
    shutil.copyfile(PARAMS, copy)
    apply_overrides(copy, overrides.get("params.yaml", []))
    return load_params(copy)
