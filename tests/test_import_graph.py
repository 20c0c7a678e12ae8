"""The package's parts stack without circles: every module imports only from its own part
or from parts below it (module-level and function-level imports alike), so a part can be
read, tested and changed knowing only what lies beneath it. Read from the syntax tree."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cnnspec"

# bottom to top; a module's part is its subpackage, or its own name at the top level
ORDER = ["base", "layers", "spec", "models", "data", "training", "inference", "pipeline", "top"]
BASE = {"errors", "atomic", "paths", "fetch", "regular_files", "torch_files", "progress", "version"}
TOP = {"cli", "__init__", "__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def part_of(module: str) -> str:
    pieces = module.split(".")
    if module == "cnnspec" or (len(pieces) == 2 and pieces[1] in TOP):
        return "top"
    if len(pieces) >= 2 and pieces[1] in BASE:
        return "base"
    return pieces[1]


def resolve(name: str) -> str | None:
    """The cnnspec module `name` refers to (a name imported from a module is that module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import statements under `if TYPE_CHECKING:`: never run, so not edges."""
    return {id(node) for block in ast.walk(tree)
            if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
            for statement in block.body for node in ast.walk(statement)}


def imports_of(module: str) -> set[str]:
    """The cnnspec modules `module` imports, at module level or inside functions."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skipped = type_checking_only(tree)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from cnnspec.layers import conv` imports the module cnnspec.layers.conv,
            # `from cnnspec.layers.geometry import error` the module it names
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                     for alias in node.names]
        for name in names:
            target = resolve(name) if name.split(".")[0] == "cnnspec" else None
            if target and target != module:
                found.add(target)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_the_graph_is_read():
    assert len(MODULES) > 40
    assert "cnnspec.layers.registry" in GRAPH["cnnspec.spec.reader"]
    assert part_of("cnnspec.errors") == "base" and part_of("cnnspec.cli") == "top"


def test_no_module_imports_a_part_above_its_own():
    upward = [f"{module} ({part_of(module)}) imports {target} ({part_of(target)})"
              for module, targets in GRAPH.items() for target in sorted(targets)
              if ORDER.index(part_of(target)) > ORDER.index(part_of(module))]
    assert upward == []


def find_cycle(graph: dict) -> list[str] | None:
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[module] = "done"
        stack.pop()
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_no_import_circles():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_type_checking_imports_are_not_edges_but_function_level_ones_are():
    assert "cnnspec.spec.nodes" not in GRAPH["cnnspec.layers.registry"]  # under TYPE_CHECKING
    assert "cnnspec.models.compiler" in GRAPH["cnnspec.models.checkpoint"]  # inside a function


def test_the_layer_registry_stands_on_the_base_alone():
    """The spec reader imports the registry, so the registry imports no layer type and
    nothing of cnnspec above the base (its schema's fixed parts are data beside it)."""
    assert GRAPH["cnnspec.layers.registry"] <= {"cnnspec.errors", "cnnspec.layers.schema_base"}
    assert GRAPH["cnnspec.layers.schema_base"] == set()


def test_every_part_says_what_it_owns_and_may_import():
    for part in ORDER[1:-1]:
        doc = ast.get_docstring(ast.parse((PACKAGE / part / "__init__.py").read_text())) or ""
        assert f"The {part} part" in doc and "import" in doc, part


def test_the_checks_catch_what_they_claim_to():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert ORDER.index(part_of("cnnspec.pipeline.params")) > ORDER.index(part_of("cnnspec.training.finetune"))
