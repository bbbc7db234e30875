"""The codebase's shape, as a maintainer reads it: lines per package, longest code, import circles.

    python benchmarks/codebase.py [REV ...]     # default: the working tree; REV: any git revision

For each revision: files and lines per package of chared_flows/, the longest functions
and classes (AST line spans, decorators and docstrings included), and the number of
import circles (every import form, function-level too; Tarjan's strongly connected
components, as tests/unit/test_layers.py counts them).
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tarfile
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.unit.test_layers import import_cycles  # noqa: E402  (the layer test's own cycle finder)


def checkout(rev: str, into: Path) -> Path:
    """chared_flows/ of `rev`, extracted under `into` (git archive: no work tree touched)."""
    archive = into / "src.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev, "chared_flows"], stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "chared_flows"


def package_of(path: Path, base: Path) -> str:
    parts = path.relative_to(base).parts
    return "/".join(parts[:-1]) or "(top)"


def module_name(path: Path, base: Path) -> str:
    rel = path.relative_to(base.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.AST, name: str, is_package: bool) -> set:
    """Modules named by imports: a name, or (module, name) for `from module import name`."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.update((module, a.name) for a in node.names)
    return found


def resolve(target, modules: set[str]) -> str:
    """`from pkg import sub` names the submodule pkg.sub when there is one, else pkg itself."""
    if isinstance(target, tuple):
        module, name = target
        return f"{module}.{name}" if f"{module}.{name}" in modules else module
    return target


def shape(base: Path) -> dict:
    lines, files = defaultdict(int), defaultdict(int)
    functions, classes, graph = [], [], {}
    for path in sorted(base.rglob("*.py")):
        text = path.read_text()
        package = package_of(path, base)
        lines[package] += text.count("\n")
        files[package] += 1
        tree = ast.parse(text)
        rel = path.relative_to(base).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                entry = (node.end_lineno - first + 1, f"{rel}:{node.name}")
                (classes if isinstance(node, ast.ClassDef) else functions).append(entry)
        name = module_name(path, base)
        graph[name] = imports(tree, name, path.name == "__init__.py")
    modules = set(graph)
    edges = {m: {t for t in map(lambda i: resolve(i, modules), targets) if t in modules and t != m}
             for m, targets in graph.items()}
    return {"lines": lines, "files": files, "functions": sorted(functions, reverse=True),
            "classes": sorted(classes, reverse=True), "circles": import_cycles(edges)}


def report(label: str, s: dict, top: int) -> None:
    print(f"== {label}")
    print(f"{'package':28} {'files':>5} {'lines':>6}")
    for package in sorted(s["lines"]):
        print(f"{package:28} {s['files'][package]:>5} {s['lines'][package]:>6}")
    print(f"{'total':28} {sum(s['files'].values()):>5} {sum(s['lines'].values()):>6}")
    for kind in ("classes", "functions"):
        print(f"longest {kind}: " + ", ".join(f"{where} {n}" for n, where in s[kind][:top]))
    print(f"import circles: {len(s['circles'])} {s['circles'] if s['circles'] else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revs", nargs="*", help="git revisions (default: the working tree)")
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    if not args.revs:
        report("working tree", shape(ROOT / "chared_flows"), args.top)
    for rev in args.revs:
        with tempfile.TemporaryDirectory() as tmp:
            report(rev, shape(checkout(rev, Path(tmp))), args.top)


if __name__ == "__main__":
    main()
