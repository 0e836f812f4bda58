"""The scheduling-policy outcomes benchmark (``plugins/schedulers/benchmarks/policy_outcomes.py``)
in its quick mode: the simulated outcomes are deterministic and the table has every row.

Neither speed nor the benchmark's targets are asserted here: they are measured outcomes, which
the full run reports (``plugins/schedulers/README.md``).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = (Path(__file__).resolve().parents[2] / "plugins" / "schedulers" / "benchmarks"
          / "policy_outcomes.py")


@pytest.fixture(scope="module")
def po():
    spec = importlib.util.spec_from_file_location("policy_outcomes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _rows(table: str) -> list[list[str]]:
    lines = table.strip().splitlines()
    assert lines[0].startswith("| policy |") and set(lines[1]) <= set("|-"), table
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_simulated_outcomes_are_deterministic(po):
    first = po.run_outcomes(po.QUICK)
    second = po.run_outcomes(po.QUICK)
    assert first == second
    assert set(first) == {w.name for w in po.WORKLOADS}
    for workload in po.WORKLOADS:
        assert set(first[workload.name]) == {"fcfs", workload.policy}


def test_quick_run_writes_json_and_a_table_with_every_row(po, tmp_path, capsys):
    out = tmp_path / "outcomes.json"
    po.main(["--quick", "--json", str(out)])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    table = result["table"]
    assert printed.rstrip().endswith(table), "the table is not printed last"
    rows = _rows(table)
    assert all(len(r) == 6 for r in rows), rows
    overhead = [p for p in po.OVERHEAD_POLICIES if p != "fcfs"]
    expected = ([("fair", "small tenant's share"), ("fair", "Jain's index"),
                 ("fair", "same, 64 sequences"),
                 ("priority", "high-priority TTFT"), ("sjf", "mean end-to-end latency"),
                 ("sjf", "long jobs"), ("deadline", "TTFT targets met"),
                 ("cache-aware", "prefix-cache hit rate")]
                + [(p, "overhead") for p in overhead]
                + [("core (reference)", "host overhead of a whole engine step")])
    assert len(rows) == len(expected), rows
    for (policy, outcome), row in zip(expected, rows):
        assert row[0] == policy and row[1].startswith(outcome), row
    assert set(result["overhead_wall_clock"]) == set(po.OVERHEAD_POLICIES)
    for key in ("commit", "machine", "seed", "cost_model", "outcomes_simulated",
                "core_overhead_reference"):
        assert key in result, key
    assert result["machine"]["cpu"] and result["machine"]["python"]


def test_write_readme_replaces_only_the_marked_region(po, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{po.MARK_BEGIN}\nold table\n{po.MARK_END}\nafter\n")
    po.write_readme("| new |", "method", readme)
    assert readme.read_text() == (f"# title\n\nbefore\n{po.MARK_BEGIN}\n| new |\n\nmethod\n"
                                  f"{po.MARK_END}\nafter\n")
    po.write_readme("| newer |", "method", readme)  # idempotent on its own output
    assert readme.read_text().count(po.MARK_BEGIN) == 1
    assert "| new |" not in readme.read_text() and "| newer |" in readme.read_text()
