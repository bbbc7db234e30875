"""The package's import rules (DESIGN.md "Layout and who may import whom"), checked on the source."""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "chared_flows"
OPTIONAL_SDKS = {"mlflow": "tracking/mlflow.py", "promptlayer": "tracking/promptlayer.py",
                 "langchain_core": "integrations/langchain.py", "langchain": "integrations/langchain.py",
                 "ray": "flow/distributed.py"}
# Leaf modules of the combinations package, each for one SDK (imported only where used).
MORE_SDK_LEAVES = {"mlflow": {"combinations/pyfunc.py", "combinations/mlflow_model_code.py",
                              "combinations/live_mlflow.py"},
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
        if rel(path) != "cli.py":
            assert "chared_flows.cli" not in imports_of(path), rel(path)


def test_only_the_cli_reaches_the_ray_module():
    """A local run never imports Ray: only `--ray` (in the CLI) loads flow/distributed.py."""
    for path in modules():
        if rel(path) not in ("cli.py", "flow/distributed.py"):
            assert "chared_flows.flow.distributed" not in imports_of(path), rel(path)
