"""What every benchmark shares: one result schema, one table printer, the machine it ran on.

A benchmark is a module `bench/NAME.py` run as `python -m bench.NAME`. Its docstring's first line
is the question it answers (`python -m bench` lists them). It measures, then hands a `Result` to
`report`, which prints the table and writes `bench/results/NAME-DATE[-LABEL].json`:

    {"bench": NAME, "question": ..., "date": ..., "machine": {...},
     "settings": {...},        # what was run: sizes, ranks, options
     "figures": {...},         # what was measured, in units named by the keys
     "reference": ...,         # what the figures are compared with (a library, a baseline run)
     "goal": {"claim": ..., "met": true | false | null},
     "table": {"columns": [...], "rows": [[...], ...]}}

Ratios against a reference measured in the same run are the figures that travel between machines;
lone times do not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from dataclasses import asdict, dataclass, field
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
KEYS = ("bench", "question", "date", "machine", "settings", "figures", "reference", "goal", "table")
_VERSIONS = ("torch", "deepspeed", "numpy", "transformers")


@dataclass
class Goal:
    """What the benchmark sets out to show, and whether this run showed it (None: not judged)."""

    claim: str
    met: bool | None


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def add(self, *row: Any) -> None:
        if len(row) != len(self.columns):
            raise ValueError(f"a row of {len(row)} values for {len(self.columns)} columns {self.columns}")
        self.rows.append(list(row))


@dataclass
class Result:
    question: str
    settings: dict[str, Any]
    figures: dict[str, Any]
    table: Table
    reference: str | None = None
    goal: Goal | None = None


def machine() -> dict[str, Any]:
    """The facts that decide whether two results can be compared: CPUs, load, library versions."""
    versions = {}
    for name in _VERSIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": len(os.sched_getaffinity(0)), "load_average": list(os.getloadavg()),
            "versions": versions}


def question_of(module_doc: str | None) -> str:
    """A benchmark's question: the first line of its module docstring."""
    return (module_doc or "").strip().splitlines()[0] if module_doc else ""


def format_cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


_FIGURE = re.compile(r"[-+]?[\d,.]+(e[-+]?\d+)?\s*(x|%|s|ms|MiB|GiB)?|None|")


def is_text(column: list[Any]) -> bool:
    """A column of words (names, statuses, prose), not of figures (numbers, "1.2x", "+3.0%", "5 s")."""
    return not all(not isinstance(v, str) or _FIGURE.fullmatch(v) for v in column)


def print_table(table: Table, out=sys.stdout) -> None:
    """`table` aligned: the first column and columns of words to the left, figures to the right."""
    cells = [table.columns] + [[format_cell(v) for v in row] for row in table.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.columns))]
    left = [i == 0 or is_text([row[i] for row in table.rows]) for i in range(len(table.columns))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) if lj else c.rjust(w) for c, w, lj in zip(row, widths, left)).rstrip(),
              file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line: its docstring as help, and --json (where report writes)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, default=None, help="where to write the result "
                   "(default: bench/results/NAME-DATE[-LABEL].json)")
    return p


def record(name: str, result: Result, when: str | None = None, facts: dict[str, Any] | None = None) -> dict:
    """The JSON record of `result` (the schema above); `when` and `facts`: today and this machine."""
    return {"bench": name, "date": when or str(date.today()), "machine": facts or machine(), **asdict(result)}


def write(path: str | Path, rec: dict) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=2, default=str) + "\n")
    return out


def load(path: str | Path) -> dict:
    """A result record, checked to have every key of the schema."""
    rec = json.loads(Path(path).read_text())
    missing = [k for k in KEYS if k not in rec]
    if missing:
        raise ValueError(f"{path}: not a bench result, no {missing}")
    return rec


def result_path(name: str, label: str = "") -> Path:
    return RESULTS / f"{name}-{date.today()}{'-' + label if label else ''}.json"


def report(name: str, result: Result, path: str | Path | None = None, label: str = "") -> Path:
    """Print `result`'s table and goal, write its JSON (default bench/results/NAME-DATE[-LABEL].json)."""
    print(result.question)
    print_table(result.table)
    if result.reference:
        print(f"reference: {result.reference}")
    if result.goal:
        verdict = {True: "met", False: "NOT met", None: "not judged"}[result.goal.met]
        print(f"goal: {result.goal.claim}: {verdict}")
    out = write(path or result_path(name, label), record(name, result))
    print(f"wrote {out}")
    return out
