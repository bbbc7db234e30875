from __future__ import annotations

import pytest

from chared_flows.errors import WorkflowError
from chared_flows.flow.parsers import get_parser, parse_number, parse_python_code, parse_text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is 42.", 42),
        ("3 apples + 4 apples = 7", 7),
        ("Total: 1,234 dollars", 1234),
        ("it drops to -5 degrees", -5),
        ("half is 2.5", 2.5),
        ("list 3, 4", 4),
        ("no digits here", None),
        ("", None),
        ("x = 7.0", 7),
    ],
)
def test_number_takes_the_last_number(text: str, expected) -> None:
    assert parse_number(text) == expected
    assert type(parse_number(text)) is type(expected)


def test_python_code_prefers_a_fenced_block() -> None:
    text = "Sure!\n```python\ndef f(x):\n    return x + 1\n```\nThat adds one."
    assert parse_python_code(text) == "def f(x):\n    return x + 1\n"


def test_python_code_cuts_a_completion_where_the_function_ends() -> None:
    text = "    total = 0\n    for x in xs:\n\n        total += x\n    return total\n\nprint(f([1]))\n"
    assert parse_python_code(text) == "    total = 0\n    for x in xs:\n\n        total += x\n    return total\n"


def test_text_strips_and_unknown_parser_is_an_error() -> None:
    assert parse_text("  hi \n") == "hi"
    assert get_parser("number") is parse_number
    with pytest.raises(WorkflowError, match="unknown output parser 'yaml'; use one of: number, python_code, text"):
        get_parser("yaml")
