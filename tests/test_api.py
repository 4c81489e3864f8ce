"""The public surface: exactly the exported names, typed, documented."""

from __future__ import annotations

import inspect
from pathlib import Path

import petalnet

EXPECTED = {
    "BackboneNotFoundError",
    "Callback",
    "CheckpointError",
    "DataError",
    "EarlyStopping",
    "EpochRecord",
    "EvaluationReport",
    "FeatureExtractor",
    "FlowerClassifier",
    "ImagePrediction",
    "ImageReadError",
    "NotFittedError",
    "PetalnetError",
    "PetalnetWarning",
    "Prediction",
    "Preprocessing",
    "TopK",
    "TrainingState",
    "WeightsUnavailableError",
    "__version__",
    "build_backbone",
    "get_backbone",
    "list_backbones",
    "register_backbone",
}


def test_all_is_exactly_the_public_api_and_sorted():
    assert set(petalnet.__all__) == EXPECTED
    assert petalnet.__all__ == sorted(petalnet.__all__)
    public = {n for n in dir(petalnet) if not n.startswith("_")}
    # subpackages/modules are reachable but not part of __all__
    modules = {n for n in public if inspect.ismodule(getattr(petalnet, n))}
    assert public - modules == EXPECTED - {"__version__"}


def test_package_is_typed():
    assert (Path(petalnet.__file__).parent / "py.typed").is_file()


def test_public_callables_have_docstrings_with_sections():
    for name in petalnet.__all__:
        obj = getattr(petalnet, name)
        if name.startswith("__"):
            continue
        assert inspect.getdoc(obj), name
    for method in ("fit", "evaluate", "predict", "save", "load"):
        doc = inspect.getdoc(getattr(petalnet.FlowerClassifier, method))
        assert "Args:" in doc and "Returns:" in doc and "Raises:" in doc, method


def test_errors_share_one_base():
    for name in petalnet.__all__:
        obj = getattr(petalnet, name)
        if inspect.isclass(obj) and name.endswith("Error"):
            assert issubclass(obj, petalnet.PetalnetError)


def _internal_imports() -> dict[str, set[tuple[str, str]]]:
    """Module -> {(imported petalnet module, imported name)} for every import in src/."""
    import ast

    root = Path(petalnet.__file__).parent
    graph: dict[str, set[tuple[str, str]]] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found: set[tuple[str, str]] = set()
        tree = ast.parse(path.read_text())
        typing_only = {  # `if TYPE_CHECKING:` imports: annotations, never a runtime cycle
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
            for stmt in node.body
            for inner in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("petalnet"):
                    for alias in node.names:
                        sub = f"{node.module}.{alias.name}"
                        is_module = (root.parent / Path(*sub.split("."))).with_suffix(".py")
                        target = sub if is_module.exists() else node.module
                        found.add((target, alias.name))
            elif isinstance(node, ast.Import):
                found |= {(a.name, "") for a in node.names if a.name.startswith("petalnet")}
        graph[name] = found
    return graph


def test_no_import_cycles_and_no_private_imports():
    graph = _internal_imports()
    private = sorted(
        f"{mod} imports {target}.{name}"
        for mod, edges in graph.items()
        for target, name in edges
        if name.startswith("_") and name != "__version__" and not target.endswith("._version")
    )
    assert private == []
    edges = {m: {t for t, _ in e if t in graph and t != m} for m, e in graph.items()}
    # the package's __init__ files re-export: only modules below them can form a cycle
    edges = {
        m: {t for t in ts if t not in ("petalnet", "petalnet.backbones")} for m, ts in edges.items()
    }
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            assert state.get(target) != 1, f"import cycle: {' -> '.join([*path, target])}"
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_import_and_help_load_no_torch():
    """`import petalnet` and `petalnet --help` stay fast: torch loads on first real use."""
    import subprocess
    import sys

    code = (
        "import sys, petalnet, petalnet.cli\n"
        "petalnet.cli.build_parser().format_help()\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]\n"
        "petalnet.FlowerClassifier\n"
        "assert 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
