"""Reading docs/errors.md: its rows, and whether a message matches a row's documented text.

A row is `| `id` | where | exception | message | what to do |`. The message is a code span whose
`{placeholders}` stand for variable parts; everything else is literal. A message matches a row when
the documented text, with each placeholder matching any text (newlines included), matches the
whole message or one whole line of it (multi-line messages such as a refused state dict list one
problem per line).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "errors.md"
PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")


@dataclass(frozen=True)
class Row:
    id: str
    where: str
    exception: str  # "ValueError", "StateDictError (RuntimeError)" or "exit 2"
    message: str

    @property
    def type_name(self) -> str:
        return self.exception.split()[0]

    @property
    def base_name(self) -> str | None:
        m = re.search(r"\((\w+)\)", self.exception)
        return m.group(1) if m else None

    @property
    def exit_code(self) -> int | None:
        m = re.fullmatch(r"exit (\d+)", self.exception)
        return int(m.group(1)) if m else None

    @property
    def regex(self) -> re.Pattern[str]:
        return doc_regex(self.message)


def _cells(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def _code(cell: str) -> str:
    m = re.fullmatch(r"(`+)\s?(.*?)\s?\1", cell, re.S)
    if not m:
        raise ValueError(f"expected a code span, got {cell!r}")
    return m.group(2)


def parse_rows(path: Path = DOC) -> list[Row]:
    rows = []
    for line in path.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cells = _cells(line)
        if len(cells) != 5:
            raise ValueError(f"{path}: a row needs 5 cells, got {len(cells)}: {line}")
        rows.append(Row(_code(cells[0]), cells[1], _code(cells[2]), _code(cells[3])))
    return rows


def doc_regex(message: str) -> re.Pattern[str]:
    parts = PLACEHOLDER.split(message)
    return re.compile("(.*?)".join(re.escape(p) for p in parts), re.S)


def matches(row: Row, text: str) -> bool:
    rx = row.regex
    if rx.fullmatch(text):
        return True
    return any(rx.fullmatch(line.strip()) for line in text.splitlines())
