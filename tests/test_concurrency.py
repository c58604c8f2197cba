"""Several processes routing into one database: nothing lost, nothing doubled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bagbot_core.db import get_engine, session_factory
from bagbot_core.models import Order

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run_workers(url: str, specs: list[dict[str, str]], *, site: Path | None = None,
                env: dict[str, str] | None = None) -> list[dict[str, object]]:
    """Run one ``tests.workers`` process per spec, started together; their JSON answers.

    ``site``: a directory of installed plugin distributions to load (``--entrypoints``);
    ``env``: extra environment (the plugins' settings).
    """
    start_at = time.time() + (4.0 if site else 2.0)  # loading plugins takes longer
    path = os.pathsep.join([str(site), str(ROOT)]) if site else str(ROOT)
    environ = {**os.environ, **(env or {}), "PYTHONPATH": path, "BAGBOT_LOG_LEVEL": "error"}
    flags = ["--entrypoints"] if site else []
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.workers", "--url", url, "--start-at", str(start_at),
             *flags, *[part for key, value in spec.items() for part in (f"--{key}", value)]],
            cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for spec in specs
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        results.append({**json.loads(out), "start_at": start_at})
    return results


def rows(url: str) -> tuple[int, int]:
    with session_factory(get_engine(url))() as db:
        total = db.scalar(select(func.count()).select_from(Order)) or 0
        distinct = db.scalar(select(func.count(func.distinct(Order.client_order_id)))) or 0
    return int(total), int(distinct)


def test_four_writers_on_one_database(db_url: str) -> None:
    results = run_workers(db_url, [{"n": "250", "user": f"w{i}"} for i in range(4)])
    for result in results:
        assert result["errors"] == {}, result  # no "database is locked" reached a caller
        assert result["statuses"] == {"filled": 250}
    assert rows(db_url) == (1000, 1000)


@pytest.mark.postgres
def test_idempotency_races_on_postgres(postgres_url: str) -> None:
    from sqlalchemy import text

    with get_engine(postgres_url).begin() as conn:
        conn.execute(text("TRUNCATE orders RESTART IDENTITY CASCADE"))
    # Two processes route the same 1,000 idempotency keys at the same moment.
    results = run_workers(postgres_url, [{"n": "1000", "keys": "race"} for _ in range(2)])
    for result in results:
        assert result["errors"] == {}, result
    assert rows(postgres_url) == (1000, 1000)
    # Each key reached an exchange exactly once across both processes.
    assert sum(int(r["create_calls"]) for r in results) == 1000  # type: ignore[call-overload]
