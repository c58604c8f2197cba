"""Quick run of the benchmark harness's Binance scenarios, so ``python -m benchmarks`` cannot rot.

Runs in a subprocess from the repository root (the harness is not an installed package) with
tiny N and no PostgreSQL; checks the table and the JSON, not the timings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.skipif(not (ROOT / "benchmarks" / "__main__.py").exists(),
                    reason="benchmarks/ is not in this checkout")
def test_quick_harness_runs_the_binance_scenarios(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "seq", "seq5", "naive",
         "conc", "risk", "rows", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert set(data["scenarios"]) == {"seq", "seq5", "naive", "conc", "risk", "rows"}
    for key, scenario in data["scenarios"].items():
        assert len(scenario["ratios"]) == 1, key
        assert scenario["ratio_median"] > 0, key
    bagbot = data["scenarios"]["seq"]["samples"]["bagbot"][0]
    n = bagbot["n"]
    # One order request per order and no extra round trip: the reference quote is cached.
    assert bagbot["requests"].get("POST /api/v3/order") == n
    assert bagbot["requests"].get("GET /api/v3/ticker/bookTicker", 0) <= 1
    assert "GET /api/v3/exchangeInfo" not in bagbot["requests"]
    naive = data["scenarios"]["naive"]["samples"]["naive"][0]
    assert naive["requests"]["GET /api/v3/exchangeInfo"] == naive["n"]
    assert "| 4. concurrent, fake adds 20 ms |" in result.stdout
    # Every risk control on: still one order request per order, every order accepted.
    for key, side in (("risk", "bagbot"), ("rows", "empty"), ("rows", "100k")):
        sample = data["scenarios"][key]["samples"][side][0]
        assert sample["requests"].get("POST /api/v3/order") == sample["n"], (key, side)
