"""Read a YAML file into plain data, with errors that say which file and which line.

Shared by templates and workflows. Pydantic validation errors are mapped back to the
line of the offending key, so a user sees `workflows/x.yaml:14: variants.1.weights: ...`
instead of a stack of pydantic internals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import ValidationError

Locator = Callable[[tuple[Any, ...]], int | None]


def load_yaml(path: Path, error_cls: type[Exception]) -> tuple[Any, Locator]:
    """Parse `path`; return the data and a function mapping a key path to a 1-based line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error_cls(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise error_cls(f"{path}:{line}: not UTF-8 (byte {exc.object[exc.start]:#04x}); save the file as UTF-8") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error_cls(f"{where}: malformed YAML: {problem}") from None
    return data, lambda key_path: _line_of(node, key_path)


def _line_of(node: Any, key_path: tuple[Any, ...]) -> int | None:
    """Line of the deepest node on `key_path` that exists (1-based), None if no node."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for key in key_path:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(key):
                    child, line = value_node, key_node.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if 0 <= key < len(node.value):
                child = node.value[key]
                line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


class KeyedValueError(ValueError):
    """A ValueError raised inside a validator that knows which key of the file it is about.

    subtle: pydantic locates an error by the field whose validator raised it, so a model
    validator that checks `variants` reports it at the top level (line 1 of the file);
    raised as this error, it carries `loc` (e.g. ("variants", 2)) and the message points
    at that key's own line.
    """

    def __init__(self, message: str, loc: tuple[Any, ...]):
        super().__init__(message)
        self.loc = tuple(loc)


def describe_validation_error(path: Path, locate: Locator, exc: ValidationError) -> str:
    """One line per problem: `file:line: dotted.key: message`."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, KeyedValueError):
            loc = cause.loc
        line = locate(loc)
        where = f"{path}:{line}" if line else str(path)
        dotted = ".".join(str(part) for part in loc) or "(top level)"
        # pydantic prefixes the text of a ValueError raised in a validator; the user wrote neither
        message = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key (remove it or check its spelling)"
        lines.append(f"{where}: {dotted}: {message}")
    return "; ".join(lines)
