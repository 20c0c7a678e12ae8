"""dvc.yaml's deps name every cnnspec file a stage runs, so a change to one of them
re-runs the stage (download, preprocess and plot list modules one by one)."""
import ast
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGES = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
STAGES["export"] = yaml.safe_load((REPO_ROOT / "export" / "dvc.yaml").read_text())["stages"]["export"]


def cnnspec_files(script: str, seen=None) -> set[str]:
    """The cnnspec files `script` imports, at any depth, lazy imports included."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse((REPO_ROOT / script).read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cnnspec":
            names = [node.module] + ([f"cnnspec.{alias.name}" for alias in node.names]
                                     if node.module == "cnnspec" else [])
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("cnnspec")]
        for name in names:
            for path in ("cnnspec/__init__.py", name.replace(".", "/") + ".py"):
                if path not in seen and (REPO_ROOT / path).is_file():
                    seen.add(path)
                    cnnspec_files(path, seen)
    return seen


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_cnnspec_file_a_stage_runs_is_a_dep(stage):
    deps = STAGES[stage]["deps"]
    if "cnnspec" in deps:
        return  # the whole package
    needed = cnnspec_files(f"stages/{stage}.py")
    if "model" not in STAGES[stage]["params"]:
        needed.discard("cnnspec/spec/plugins.py")  # load_params imports it for the model section only
    if "cnnspec/pipeline/params.py" in needed:
        needed.add("cnnspec/pipeline/params_schema.json")
    assert "cnnspec/pipeline/params.py" in needed  # the import walk itself works: every stage reads params
    assert sorted(needed - set(deps)) == []


def test_the_import_walk_follows_lazy_imports():
    assert "cnnspec/inference/export.py" in cnnspec_files("stages/export.py")  # imported inside main()


def test_dvc_reads_the_pipeline_s_yaml_with_ruamel_s_c_parser():
    """Every dvc command parses dvc.yaml, dvc.lock and params.yaml (13 times in a no-op
    `dvc repro`); ruamel.yaml's pure-Python parser made that a fifth of its time."""
    from dvc.utils.serialize import parse_yaml
    from ruamel.yaml import YAML
    from ruamel.yaml.main import CParser

    assert CParser is not None, "ruamel.yaml.clib is not installed: pip install -e ."
    assert YAML(typ="safe").Parser is CParser
    text = (REPO_ROOT / "dvc.yaml").read_text()
    assert parse_yaml(text, "dvc.yaml") == yaml.safe_load(text)
