"""The README's "Trying Binance offline" snippet runs as written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_offline_snippet_routes_an_order(tmp_path: Path) -> None:
    text = README.read_text()
    section = text[text.index("### Trying Binance offline"):]
    code = section[section.index("```python") + len("```python"):]
    code = code[: code.index("```")]
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120,
                            env={**os.environ, "BAGBOT_LOG_LEVEL": "error"})
    assert result.returncode == 0, result.stderr[-2000:]
    status, filled, price, external_id = result.stdout.split()
    assert (status, filled, price) == ("filled", "0.01", "50000")
    assert external_id.isdigit()
    assert (tmp_path / "offline.db").exists()
