"""Write a benchmark's tables into a named section of a Markdown file, leaving the rest of the file alone.

Several scripts report into docs/exact_mode_results.md; each owns the text
between its markers, so rerunning one does not erase the others (or the notes
written by hand around them).
"""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, name: str, body: str, title: str = "# Exact mode: measured results") -> None:
    start, end = f"<!-- {name}: start (generated, rerun the script to update) -->", f"<!-- {name}: end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else f"{title}\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
