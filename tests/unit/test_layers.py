"""The package's import rules (DESIGN.md "Layout and who may import whom"), checked on the source."""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "chared_flows"
OPTIONAL_SDKS = {"mlflow": "tracking/mlflow/client.py", "promptlayer": "tracking/promptlayer.py",
                 "langchain_core": "integrations/langchain.py", "langchain": "integrations/langchain.py",
                 "ray": "flow/distributed.py"}
# More leaf modules for one SDK each (imported only where used): the tracking package's dataset input, the combinations package's.
MORE_SDK_LEAVES = {"mlflow": {"tracking/mlflow/datasets.py", "combinations/pyfunc.py",
                              "combinations/mlflow_model_code.py", "combinations/live_mlflow.py"},
                   "langchain_core": {"combinations/router.py"}}


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def imports_of(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file (function-level imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def test_the_walk_sees_the_package():
    assert len(modules()) > 20 and "decoding/decoder.py" in {rel(p) for p in modules()}


@pytest.mark.parametrize("leaf", ["errors.py", "records.py"])
def test_leaves_use_the_standard_library_only(leaf):
    for name in imports_of(PACKAGE / leaf):
        assert name.split(".")[0] in sys.stdlib_module_names or name == "__future__", (leaf, name)


def test_decoding_imports_nothing_of_the_package_but_errors():
    for path in (PACKAGE / "decoding").rglob("*.py"):
        for name in imports_of(path):
            if name.startswith("chared_flows"):
                assert name.startswith("chared_flows.decoding") or name == "chared_flows.errors", (rel(path), name)
            assert name.split(".")[0] not in OPTIONAL_SDKS, (rel(path), name)


@pytest.mark.parametrize("layer", ["tracking", "reports"])
def test_tracking_and_reports_see_only_records(layer):
    for path in (PACKAGE / layer).rglob("*.py"):
        for name in imports_of(path):
            if name.startswith("chared_flows"):
                assert name.startswith(f"chared_flows.{layer}") or name in (
                    "chared_flows.records", "chared_flows.errors", "chared_flows"), (rel(path), name)


def test_optional_sdks_only_in_their_own_leaf():
    for path in modules():
        for name in imports_of(path):
            root = name.split(".")[0]
            if root in OPTIONAL_SDKS:
                assert rel(path) in {OPTIONAL_SDKS[root], *MORE_SDK_LEAVES.get(root, ())}, (rel(path), name)


def test_nothing_imports_the_cli():
    for path in modules():
        if rel(path) not in ("cli.py", "__main__.py"):  # `python -m chared_flows` is the CLI
            assert "chared_flows.cli" not in imports_of(path), rel(path)


def test_only_the_cli_reaches_the_ray_module():
    """A local run never imports Ray: only `--ray` (in the CLI) loads flow/distributed.py."""
    for path in modules():
        if rel(path) not in ("cli.py", "flow/distributed.py"):
            assert "chared_flows.flow.distributed" not in imports_of(path), rel(path)


# --- the module graph: every import edge between the package's own modules ---------------------

def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in modules()}


def edges_of(path: Path) -> set[str]:
    """The package modules a file imports (function-level imports too; `from pkg import mod` names mod)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: anchor at the importing package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # `a.b.func` -> module a.b
                name = name.rpartition(".")[0]
            if name and name != me:
                found.add(name)
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or around a circle (Tarjan's SCCs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_the_cycle_finder_finds_a_circle_and_a_longer_one():
    assert import_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_reads_every_import_form():
    assert "chared_flows.decoding.backends.loading" in edges_of(PACKAGE / "decoding/members.py")
    assert "chared_flows.errors" in edges_of(PACKAGE / "decoding/backends/files.py")


def test_no_import_circles_in_the_package():
    """Lazy (function-level) imports count: they tie modules together just the same."""
    assert import_cycles({name: edges_of(path) for name, path in MODULES.items()}) == []


# Inside decoding/: the engine (decoding/*.py) may use backends/; backends/ sees only itself,
# the byte tables and errors (never the engine, nor decoding/__init__, which imports the engine).
BYTE_TABLES = {"chared_flows.decoding.vocab", "chared_flows.decoding.index", "chared_flows.decoding.utf8"}


def test_backends_never_import_the_engine():
    for path in (PACKAGE / "decoding/backends").rglob("*.py"):
        for name in edges_of(path):
            assert name.startswith("chared_flows.decoding.backends") or name in BYTE_TABLES | {
                "chared_flows.errors"}, (rel(path), name)


def test_the_byte_tables_import_neither_engine_nor_backends():
    for name in BYTE_TABLES:
        for target in edges_of(MODULES[name]):
            assert target in BYTE_TABLES | {"chared_flows.errors"}, (name, target)


def test_the_file_locations_module_is_a_leaf():
    assert edges_of(PACKAGE / "decoding/backends/files.py") <= {"chared_flows.errors"}


def test_flow_never_imports_integrations():
    """A plain `chared run` must not need LangChain."""
    for path in (PACKAGE / "flow").rglob("*.py"):
        for name in edges_of(path):
            assert not name.startswith("chared_flows.integrations"), (rel(path), name)


def test_outside_decoding_only_its_face_and_config_are_used():
    """The engine's inside (decoder, members, backends, ...) is decoding's own business."""
    face = {"chared_flows.decoding", "chared_flows.decoding.config"}
    for path in modules():
        if rel(path).startswith("decoding/"):
            continue
        for name in edges_of(path):
            if name.startswith("chared_flows.decoding"):
                assert name in face, (rel(path), name)
