"""The benchmark harness must keep working: its paper and start-up scenarios in quick mode.

The full harness (``python -m benchmarks``) is not part of the timed suite; the Binance
scenarios' smoke run lives in ``plugins/bagbot_binance/tests/test_benchmarks_smoke.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (ROOT / "benchmarks" / "__main__.py").exists(),
                    reason="benchmarks/ is not in this checkout")
def test_quick_harness_runs_paper_and_startup(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "paper", "help", "plugins",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| 5. paper vs one INSERT+COMMIT |" in result.stdout
    data = json.loads(out.read_text())
    paper = data["scenarios"]["paper"]
    assert {"insert", "bagbot"} <= set(paper["samples"])
    assert paper["samples"]["bagbot"][0]["n"] > 0
    assert paper["ratio_median"] > 0
    for key in ("help", "plugins"):
        assert data["scenarios"][key]["notes"] == ["ccxt imported: no"]


@pytest.mark.skipif(not (ROOT / "benchmarks" / "service.py").exists(),
                    reason="benchmarks/ is not in this checkout")
def test_quick_harness_runs_the_service_scenario(tmp_path: Path) -> None:
    """Paper orders through a real ``bagbot serve`` against ``route_order`` in process."""
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "svc_paper",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| 9. HTTP service (1 worker, SQLite), paper, vs in process |" in result.stdout
    scenario = json.loads(out.read_text())["scenarios"]["svc_paper"]
    for side in ("in-process", "service"):
        assert scenario["samples"][side][0]["n"] > 0, side
    assert scenario["ratio_median"] > 0
