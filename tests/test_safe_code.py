"""The project's own code keeps the safe-by-default rules: no eval/exec, YAML only
through safe loaders, checkpoints only with weights_only=True, no plain pickle.load,
tar extraction only with a filter. Read from the syntax tree, not by grep, so
comments and strings do not count."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for folder in ("cnnspec", "stages", "scripts", "benchmarks")
                 for p in (ROOT / folder).rglob("*.py"))


def unsafe_calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {keyword.arg: keyword.value for keyword in node.keywords}
        if name in ("eval", "exec"):
            found.append(f"{name}()")
        elif name.endswith("yaml.load") or name.endswith("yaml.unsafe_load"):
            found.append(name)
        elif name.endswith("torch.load") and not (
                isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True):
            found.append("torch.load without weights_only=True")
        elif name in ("pickle.load", "pickle.loads"):
            found.append(name)
        elif name.endswith("extractall") and "filter" not in keywords:
            found.append("extractall without filter=")
    return found


def test_there_is_code_to_scan():
    assert len(SOURCES) > 20


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unsafe_calls(path):
    problems = unsafe_calls(ast.parse(path.read_text(), str(path)))
    assert not problems, f"{path.relative_to(ROOT)}: {problems}"


def test_the_scan_catches_what_it_claims_to():
    bad = "import torch, yaml, pickle\neval('1')\ntorch.load('x')\nyaml.load(s)\npickle.loads(b)\nt.extractall('d')\n"
    assert len(unsafe_calls(ast.parse(bad))) == 5
