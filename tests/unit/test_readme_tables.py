"""The README's tables render: each is one block of rows under a header and a delimiter row,
every row with the header's number of cells (GitHub splits cells on every unescaped `|`,
inside backticks too)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
DELIMITER = re.compile(r"^\|(\s*:?-+:?\s*\|)+$")
CELL_SPLIT = re.compile(r"(?<!\\)\|")


def tables(text: str) -> list[tuple[int, list[str]]]:
    """(first line number, rows) of each run of `|` lines outside code fences."""
    found: list[tuple[int, list[str]]] = []
    fenced = False
    current: list[str] = []
    start = 0
    for number, line in enumerate([*text.splitlines(), ""], 1):
        if line.startswith("```"):
            fenced = not fenced
        is_row = not fenced and line.lstrip().startswith("|")
        if is_row:
            if not current:
                start = number
            current.append(line.strip())
        elif current:
            found.append((start, current))
            current = []
    return found


def cells(row: str) -> int:
    return len(CELL_SPLIT.split(row.strip().strip("|")))


def table_problems(path: Path) -> list[str]:
    problems = []
    for start, rows in tables(path.read_text()):
        if len(rows) < 2 or not DELIMITER.match(rows[1]):
            problems.append(f"{path.name}:{start}: rows with no header and delimiter row above")
            continue
        width = cells(rows[0])
        for offset, row in enumerate(rows[2:], 2):
            if cells(row) != width:
                problems.append(
                    f"{path.name}:{start + offset}: {cells(row)} cells, the header has {width}"
                )
    return problems


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_every_table_has_a_header_and_rows_of_its_width(path: Path) -> None:
    assert table_problems(path) == []


def test_a_table_split_by_a_blank_line_or_a_raw_pipe_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("| a | b |\n|---|---|\n| 1 | `x|y` |\n| 2 | `x\\|y` |\n\n| 3 | 4 |\n")
    assert table_problems(page) == [
        "page.md:3: 3 cells, the header has 2",
        "page.md:6: rows with no header and delimiter row above",
    ]
