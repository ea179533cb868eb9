"""The bench harness: every benchmark states its question, `python -m bench` lists them, every stored
result has the one schema, no benchmark patches sys.path, and the table printer aligns. Fast: no
benchmark is run."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import harness
from bench.__main__ import benches
from tests.train.conftest import ROOT

BENCH = ROOT / "bench"
RESULTS = sorted((BENCH / "results").glob("*.json"))


def test_every_bench_asks_a_question():
    listing = benches()
    assert len(listing) >= 16 and "gpu_train" in listing and "minhash" in listing
    assert "harness" not in listing and "_process_memory" not in listing  # helpers, not benchmarks
    for name, question in listing.items():
        assert question.strip().endswith("?"), f"bench/{name}.py: its docstring's first line is no question"


def test_python_m_bench_lists_every_bench():
    out = subprocess.run([sys.executable, "-m", "bench"], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    for name, question in benches().items():
        assert f"python -m bench.{name} " in out and question in out


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_every_result_has_the_schema(path):
    record = json.loads(path.read_text())
    assert set(harness.KEYS) <= set(record)
    assert record["bench"] in benches() and record["question"]
    assert isinstance(record["settings"], dict) and isinstance(record["figures"], dict)
    assert isinstance(record["machine"], dict)
    assert record["goal"] is None or set(record["goal"]) == {"claim", "met"}
    table = record["table"]
    assert table["columns"] and all(len(row) == len(table["columns"]) for row in table["rows"])


def test_no_bench_patches_sys_path():
    for path in sorted(BENCH.rglob("*.py")):
        text = path.read_text()
        assert "sys.path" not in text and "noqa: E402" not in text, path.relative_to(ROOT)


def test_print_table_aligns():
    table = harness.Table(["name", "seconds", "count", "ratio", "status"])
    table.add("a", 1.23456, 1234, "1.50x", "ok")
    table.add("longer", 12345.6, None, "12.00x", "failed")
    out = io.StringIO()
    harness.print_table(table, out)
    assert out.getvalue() == (  # names and words to the left, figures to the right
        "name    seconds  count   ratio  status\n"
        "------  -------  -----  ------  ------\n"
        "a          1.23  1,234   1.50x  ok\n"
        "longer   12,346   None  12.00x  failed\n"
    )


def test_a_row_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError):
        harness.Table(["a", "b"]).add(1)


def test_report_writes_the_schema(tmp_path, capsys):
    table = harness.Table(["x", "y"], [[1, 2.5]])
    result = harness.Result("Does it work?", {"size": 1}, {"y": 2.5}, table, "nothing",
                            harness.Goal("y above 2", True))
    path = harness.report("example", result, tmp_path / "r.json")
    record = harness.load(path)
    assert record["bench"] == "example" and record["goal"] == {"claim": "y above 2", "met": True}
    assert record["table"] == {"columns": ["x", "y"], "rows": [[1, 2.5]]}
    assert "goal: y above 2: met" in capsys.readouterr().out
    assert Path(path) == tmp_path / "r.json"
