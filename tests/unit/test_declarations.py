"""Every decoding parameter and its default is declared once: DecodeFields (decoding/config.py).

Elsewhere a class may carry a field of the same name (a workflow variant's `mode:`, the
chat model's `max_new_chars`), but its type and default come from DecodeFields, never
from a literal written again; no module keeps a DEFAULT_<FIELD> constant of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

from chared_flows.decoding.config import DecodeFields

PACKAGE = Path(__file__).resolve().parents[2] / "chared_flows"
FIELDS = set(DecodeFields.model_fields)
# Same names, other parameters: the A/B bootstrap's seed; bits_per_char's scoring mode
# (exact, chared, or "variant": the variant's own decoding mode).
OTHER_PARAMETERS = {"ABResult.seed", "BitsPerChar.mode"}


def literal(node: ast.AST | None) -> bool:
    """A constant, a tuple/list of constants, or Field(<constant>, ...)/Field(default=<constant>)."""
    if isinstance(node, ast.Constant):
        return node.value is not None  # `= None` means "not set here", not a default
    if isinstance(node, (ast.Tuple, ast.List)):
        return all(isinstance(e, ast.Constant) for e in node.elts)
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Field":
        given = [*node.args[:1], *(k.value for k in node.keywords if k.arg == "default")]
        return any(literal(g) for g in given)
    return False


def redeclarations(path: Path) -> list[str]:
    found = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and getattr(item.target, "id", None) in FIELDS and (
                        f"{node.name}.{item.target.id}" not in OTHER_PARAMETERS):
                    name = item.target.id
                    if literal(item.value) or "Literal[" in ast.unparse(item.annotation):
                        found.append(f"{node.name}.{name}: {ast.unparse(item)}")
    for item in tree.body:
        if isinstance(item, ast.Assign) and len(item.targets) == 1 and isinstance(item.targets[0], ast.Name):
            name = item.targets[0].id
            if name.startswith("DEFAULT_") and name[len("DEFAULT_"):].lower() in FIELDS and literal(item.value):
                found.append(f"{name} = {ast.unparse(item.value)}")
    return found


def test_the_scan_finds_a_redeclaration(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("class V:\n    mode: Literal['chared', 'exact'] | None = None\n"
                   "    rule: str = 'mixture'\n    max_new_chars: int = Field(default=256)\n"
                   "DEFAULT_BEAM_WIDTH = 8\n")
    assert len(redeclarations(bad)) == 4


def test_no_decoding_parameter_is_declared_twice():
    config = PACKAGE / "decoding" / "config.py"
    found = {str(p.relative_to(PACKAGE)): redeclarations(p) for p in PACKAGE.rglob("*.py") if p != config}
    assert {path: lines for path, lines in found.items() if lines} == {}
