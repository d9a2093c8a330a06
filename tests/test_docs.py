"""docs/DESIGN.md's "Files" table names every module of the package and every benchmark script, and nothing that
is gone: the design stays true file for file."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def files_named_in_design(text: str) -> set[str]:
    """The paths in the first column of the "Files" table; ``dir/a.py, b.py`` names dir/a.py and dir/b.py."""
    section = text.split("\n## Files\n", 1)[1].split("\n## ", 1)[0]
    named = set()
    for line in section.splitlines():
        cells = line.split("|")
        if len(cells) < 3 or not re.search(r"\.(py|sh)\b", cells[1]):
            continue
        first, *rest = [name.strip().replace("\\", "").strip("`") for name in cells[1].split(",")]
        folder = first.rsplit("/", 1)[0]
        named |= {first, *(f"{folder}/{name}" for name in rest)}
    return named


def modules_with_code() -> set[str]:
    """Every .py of pfedla/ and every script of benchmarks/ (an ``__init__.py`` only where it holds code)."""
    found = set()
    for path in [*(REPO / "pfedla").rglob("*.py"), *(REPO / "benchmarks").glob("*.py"),
                 *(REPO / "benchmarks").glob("*.sh")]:
        if path.name == "__init__.py" and not re.search(r"^(def|class) ", path.read_text(), re.M):
            continue
        found.add(path.relative_to(REPO).as_posix())
    return found


def test_the_files_table_parses_a_row_that_names_several_files():
    text = ("x\n## Files\n\n| file | what |\n|---|---|\n| pfedla/a/b.py, c.py | two |\n"
            "| `pfedla/d/__main__.py` | one |\n")
    assert files_named_in_design(text) == {"pfedla/a/b.py", "pfedla/a/c.py", "pfedla/d/__main__.py"}


def test_design_names_every_module_and_no_module_that_is_gone():
    named = files_named_in_design((REPO / "docs/DESIGN.md").read_text())
    present = modules_with_code()
    missing, gone = sorted(present - named), sorted(named - present)
    assert not missing, f"add to docs/DESIGN.md's Files table: {missing}"
    assert not gone, f"gone, still in docs/DESIGN.md's Files table: {gone}"
