"""Output parsers a workflow names with `parser:`: plain functions from text to a value.

- `text`: the output, stripped.
- `number`: the last number in the output (int when integral, else float; None if none).
- `python_code`: the first fenced code block if there is one, else the completion body
  cut where the function ends (the first non-blank line back at column 0).
"""

from __future__ import annotations

import re
from typing import Any, Callable


Parser = Callable[[str], Any]

# subtle: "1,234" is one number, but "3, 4" is two; a thousands group is exactly 3 digits.
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")
_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def parse_text(output: str) -> str:
    return output.strip()


def parse_number(output: str) -> int | float | None:
    matches = _NUMBER.findall(output)
    if not matches:
        return None
    value = float(matches[-1].replace(",", ""))
    return int(value) if value.is_integer() else value


def parse_python_code(output: str) -> str:
    fenced = _FENCE.search(output)
    if fenced:
        return fenced.group(1).rstrip() + "\n"
    kept = []
    for i, line in enumerate(output.split("\n")):
        # the first line may continue the prompt's last line, so it is always kept
        if i > 0 and line.strip() and not line[0].isspace():
            break
        kept.append(line)
    return "\n".join(kept).rstrip() + "\n"


PARSERS: dict[str, Parser] = {
    "text": parse_text,
    "number": parse_number,
    "python_code": parse_python_code,
}

