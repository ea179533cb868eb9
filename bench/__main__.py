"""`python -m bench`: every benchmark and the question it answers; run one as `python -m bench.NAME`."""

from __future__ import annotations

import ast
from pathlib import Path

from bench.harness import question_of

HERE = Path(__file__).resolve().parent
NOT_BENCHES = {"__init__", "__main__", "harness"}


def benches() -> dict[str, str]:
    """Each benchmark module's name and question, read without importing it (no heavy imports)."""
    found = {}
    for path in sorted(HERE.glob("*.py")):
        if path.stem in NOT_BENCHES or path.stem.startswith("_"):
            continue
        found[path.stem] = question_of(ast.get_docstring(ast.parse(path.read_text())))
    return found


def main() -> None:
    listing = benches()
    width = max(map(len, listing))
    for name, question in listing.items():
        print(f"python -m bench.{name:<{width}}  {question}")


if __name__ == "__main__":
    main()
