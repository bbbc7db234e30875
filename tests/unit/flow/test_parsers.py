from __future__ import annotations

import pytest

from chared_flows.flow.parsers import PARSERS, parse_number, parse_python_code, parse_text


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


def test_text_strips_and_the_parsers_are_registered_by_name() -> None:
    # an unknown parser name is the loader's error: test_spec_loader.py::test_unknown_parser_and_unknown_key
    assert parse_text("  hi \n") == "hi"
    assert PARSERS == {"text": parse_text, "number": parse_number, "python_code": parse_python_code}
