"""The secret canary: an API token, used well and badly over real HTTP, appears in no log
line, no audit event, no database row and no answer."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from bagbot_core import audit
from bagbot_core.db import get_engine, session_factory
from bagbot_core.models import Base
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router
from bagbot_core.service.app import create_app
from bagbot_core.service.config import ServiceSettings
from tests.scripted import ScriptedExchange, scripted_plugin
from tests.service_helpers import freeze_rate_limits, make_token, serve_in_thread


@pytest.fixture
def server_log() -> Iterator[io.StringIO]:
    """Everything uvicorn logs (access lines included), as text."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    loggers = [logging.getLogger(name) for name in ("uvicorn.access", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
    yield stream
    for logger in loggers:
        logger.removeHandler(handler)
        logger.propagate = True


def everything_stored(db_url: str) -> str:
    """Every row of every table, as text."""
    with session_factory(get_engine(db_url))() as session:
        return "\n".join(repr(tuple(row)) for table in Base.metadata.sorted_tables
                         for row in session.execute(select(table)))


def test_a_token_appears_in_no_log_row_or_answer(db_url: str, tmp_path: Path,
                                                 server_log: io.StringIO) -> None:
    audit_file = tmp_path / "audit.log"
    stream = open(audit_file, "a", encoding="utf-8")  # noqa: SIM115
    audit.configure(fmt="json", stream=stream, level="debug", force=True)
    exchange = ScriptedExchange()
    exchange.script("fill", "reject", "timeout_after_accept")
    registry = PluginRegistry(disabled=(), load_entrypoints=False,
                              plugins=[("scripted", scripted_plugin(exchange))])
    settings = ServiceSettings(rate_limit=10)
    app = create_app(settings, database_url=db_url,
                     router=Router(registry, limits=RiskLimits(), allow_live=False))
    token = make_token(db_url, "alice")
    admin = make_token(db_url, "root", admin=True)
    secret = token.split("_", 2)[2]
    wrong = token[:-3] + ("aaa" if not token.endswith("aaa") else "bbb")
    order = {"connector": "scripted", "symbol": "BTC/USDT", "side": "buy", "type": "market",
             "amount": "0.01"}
    answers: list[str] = []
    try:
        with serve_in_thread(app, settings, log_level="debug", own_logging=False) as served, \
                served.client(token) as client, served.client() as anonymous:
            freeze_rate_limits(served)  # the 429s below, however slowly the machine answers
            calls = [
                lambda: client.post("/v1/orders", json=order),  # filled
                lambda: client.post("/v1/orders", json=order),  # rejected by the exchange
                lambda: client.post("/v1/orders", json=order,  # unknown
                                    headers={"Idempotency-Key": token}),
                lambda: client.post("/v1/orders", json=order,  # the same again
                                    headers={"Idempotency-Key": token}),
                lambda: anonymous.get("/v1/orders", headers={"Authorization": f"Bearer {wrong}"}),
                lambda: anonymous.get("/v1/orders", headers={"Authorization": f"Basic {token}"}),
                lambda: anonymous.get("/v1/orders", headers={"Authorization": token}),
                lambda: anonymous.get("/v1/orders", params={"access_token": token}),
                lambda: anonymous.get(f"/v1/orders/{token}"),
                lambda: anonymous.get(f"/nowhere/{token}"),
                lambda: anonymous.post("/v1/orders", json={**order, "symbol": token},
                                       headers={"Authorization": f"Bearer {admin}"}),
                lambda: anonymous.post("/v1/orders", json={**order, "params": {"note": token}},
                                       headers={"Authorization": f"Bearer {admin}"}),
                lambda: anonymous.post("/v1/orders", content=token.encode(),
                                       headers={"Authorization": f"Bearer {admin}",
                                                "Content-Type": "application/json"}),
                lambda: anonymous.post("/v1/halt", json={"reason": token},
                                       headers={"Authorization": f"Bearer {token}"}),
            ]
            calls += [lambda: client.get("/v1/orders")] * 30  # over the rate: 429s
            statuses = []
            for call in calls:
                response = call()
                statuses.append(response.status_code)
                answers.append(json.dumps(dict(response.headers)) + response.text)
    finally:
        audit.configure(force=True)
        stream.close()
    assert statuses[:4] == [201, 422, 202, 200], statuses  # the replay shows "unknown"
    assert set(statuses[4:10]) == {401, 404}, statuses
    assert all(status in (403, 422) for status in statuses[10:14]), statuses
    assert 429 in statuses[14:], statuses
    places = {"audit log": audit_file.read_text(encoding="utf-8"),
              "server log": server_log.getvalue(), "answers": "\n".join(answers),
              "database": everything_stored(db_url)}
    assert places["audit log"] and "HTTP/1.1" in places["server log"]
    for where, text in places.items():
        assert secret not in text, f"the token's secret is in the {where}"
        assert secret.upper() not in text.upper(), f"the token's secret is in the {where}"
