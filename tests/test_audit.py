"""The audit log: one event per step, bound context, and no secret anywhere."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from bagbot_core import audit, endpoints, hookimpl
from bagbot_core.connector import ConnectorSettings, ConnectorSpec
from bagbot_core.errors import BagbotError, ExchangeRejectedError
from bagbot_core.models import Order
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router
from bagbot_core.secrets import Secret
from tests.scripted import ScriptedConnector, ScriptedExchange

CANARY_SECRET = "CANARYsecretVALUE9f8e7d"
CANARY_KEY = "CANARYapikeyVALUE1a2b3c"

MARKET_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.5"}


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    audit.configure(fmt="json", stream=stream, force=True)
    yield stream
    audit.configure(force=True)


def events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def test_one_event_per_step_with_bound_context(router: Router, db: Session,
                                                     log_stream: io.StringIO,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # The scripted connector declares no endpoints: its once-per-process warning is not a
    # step of the order, so count it as already given.
    monkeypatch.setattr(endpoints, "_warned_undeclared", {"scripted"})
    order = await router.route_order("scripted", MARKET_BUY, db, "trader-7")
    names = [e["event"] for e in events(log_stream)]
    checks = len(router.registry.risk_checks())
    assert names == ["order_received"] + ["risk_check"] * checks + [
        "pending_written", "submitted", "exchange_answered", "persisted", "status_changed"]
    for event in events(log_stream)[1 + checks:]:
        assert event["user_id"] == "trader-7" and event["connector"] == "scripted"
        assert event["symbol"] == "BTC/USDT"
        assert event["client_order_id"] == order.client_order_id
        assert event["order_id"] == order.id
    assert all("timestamp" in e and "level" in e for e in events(log_stream))


async def test_risk_rejection_event_carries_check_limit_and_actual(
    router: Router, db: Session, log_stream: io.StringIO
) -> None:
    with pytest.raises(BagbotError):
        await router.route_order("scripted", {**MARKET_BUY, "amount": "12"}, db, "u")
    failed = [e for e in events(log_stream) if e["event"] == "risk_check" and not e["passed"]]
    assert {(e["check"], e["limit"], e["actual"]) for e in failed} >= {
        ("max_quantity", "10", "12")}
    assert events(log_stream)[-1]["event"] == "rejected"


def test_redaction_of_keys_and_text() -> None:
    event = audit.redact(None, "info", {
        "api_secret": CANARY_SECRET, "headers": {"X-MBX-APIKEY": CANARY_KEY},
        "error": f"POST /api/v3/order?timestamp=1&signature={CANARY_SECRET}",
        "nested": [{"password": "p"}], "note": f"Bearer {CANARY_SECRET}",
        "pem": "-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----",
        "symbol": "BTC/USDT",
    })
    text = json.dumps(event)
    assert CANARY_SECRET not in text and CANARY_KEY not in text and "MHc" not in text
    assert event["symbol"] == "BTC/USDT"


def test_secret_repr_never_shows_the_value() -> None:
    secret = Secret(CANARY_SECRET)
    for text in (repr(secret), str(secret), f"{secret}", repr({"s": secret})):
        assert CANARY_SECRET not in text
    assert secret.reveal() == CANARY_SECRET


class LeakyConnector(ScriptedConnector):
    """An exchange whose error messages quote the signed request -- as real ones do."""

    async def create_order(self, order: Any, client_order_id: str) -> Any:
        api_key = self.settings.config["api_key"]
        raise ExchangeRejectedError(
            f'binance {{"code":-2010}} POST https://x/api/v3/order?apiKey={api_key}'
            f"&signature={CANARY_SECRET}"
        )


async def test_canary_secrets_never_reach_logs_rows_or_exceptions(
    db: Session, log_stream: io.StringIO
) -> None:
    exchange = ScriptedExchange()

    class Plugin:
        @hookimpl
        def bagbot_add_connectors(self) -> list[ConnectorSpec]:
            def factory(settings: ConnectorSettings) -> Any:
                if settings.config.get("explode"):
                    raise RuntimeError(f"bad config api_secret={CANARY_SECRET}")
                return LeakyConnector(exchange, settings)
            return [ConnectorSpec("leaky", factory), ConnectorSpec("boom", factory)]

    registry = PluginRegistry(disabled=(), load_entrypoints=False, plugins=[("p", Plugin())])
    router = Router(registry, limits=RiskLimits(), connector_config={
        "leaky": {"api_key": CANARY_KEY, "api_secret": Secret(CANARY_SECRET)},
        "boom": {"explode": True, "api_secret": CANARY_SECRET},
    })
    texts: list[str] = []
    for name in ("leaky", "boom"):
        with pytest.raises(BagbotError) as info:
            await router.route_order(name, MARKET_BUY, db, "u")
        texts += [str(info.value), repr(info.value)]
    rows = db.scalars(select(Order)).all()
    assert len(rows) == 2
    texts += [f"{r.reason} {json.dumps(r.details)} {r!r}" for r in rows]
    texts.append(log_stream.getvalue())
    for text in texts:
        assert CANARY_SECRET not in text, text
        assert CANARY_KEY not in text, text
    await router.aclose()


async def test_configured_secrets_are_masked_even_without_a_key_name(
    db: Session, log_stream: io.StringIO
) -> None:
    class Bare(ScriptedConnector):
        async def create_order(self, order: Any, client_order_id: str) -> Any:
            raise ExchangeRejectedError(f"signing failed for {CANARY_SECRET}x")

    class Plugin:
        @hookimpl
        def bagbot_add_connectors(self) -> list[ConnectorSpec]:
            return [ConnectorSpec("bare", lambda s: Bare(ScriptedExchange(), s))]

    registry = PluginRegistry(disabled=(), load_entrypoints=False, plugins=[("p", Plugin())])
    router = Router(registry, limits=RiskLimits(),
                    connector_config={"bare": {"api_secret": Secret(CANARY_SECRET)}})
    with pytest.raises(ExchangeRejectedError) as info:
        await router.route_order("bare", MARKET_BUY, db, "u")
    assert CANARY_SECRET not in str(info.value)
    assert CANARY_SECRET not in log_stream.getvalue()
    assert CANARY_SECRET not in (db.scalars(select(Order)).one().reason or "")


class _Custom:
    def __repr__(self) -> str:
        return "<custom \u00e9>"


class _Structlogged:
    def __structlog__(self) -> str:
        return "shown-by-hook"


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([_Custom(), _Structlogged(), Decimal("1.50"), Decimal("NaN")]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12)


@given(st.dictionaries(st.text(max_size=12), _JSON_VALUES, max_size=8))
def test_json_lines_are_the_bytes_structlogs_own_renderer_writes(event: dict[str, Any]) -> None:
    """The encoder built once writes exactly what ``json.dumps`` with structlog's fallback
    writes: readers of existing audit files see no change."""
    ours = structlog.processors.JSONRenderer(audit._dumps)(None, "info", dict(event))
    theirs = structlog.processors.JSONRenderer(sort_keys=False)(None, "info", dict(event))
    assert ours == theirs


class CountingStream(io.StringIO):
    """A stream that counts its writes and flushes, and what was flushed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = self.flushes = 0
        self.flushed = ""

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1
        self.flushed = self.getvalue()


def test_a_batch_writes_its_events_together_in_order_and_redacted() -> None:
    stream = CountingStream()
    audit.configure(fmt="json", stream=stream, force=True)
    try:
        log = audit.get_logger(user_id="u")

        def burst() -> None:
            with audit.batch():
                for i in range(5):
                    log.info("risk_check", check=f"c{i}", passed=True, api_secret="s3cr3t")
                with audit.batch():  # inside another: written with the outer one
                    log.warning("risk_check", check="inner", passed=False)
                assert (stream.writes, stream.getvalue()) == (0, "")
                raise RuntimeError("boom")  # an error still writes every event

        with pytest.raises(RuntimeError, match="boom"):
            burst()
        # One write and one flush for the six events, all on disk when the block ended.
        assert (stream.writes, stream.flushes) == (1, 1)
        written = events(stream)
        assert stream.flushed == stream.getvalue()
        assert [e["check"] for e in written] == ["c0", "c1", "c2", "c3", "c4", "inner"]
        assert all(e["user_id"] == "u" and e["event"] == "risk_check" for e in written)
        assert all(e["api_secret"] == audit.REDACTED for e in written[:5])
        assert "s3cr3t" not in stream.getvalue()
        log.info("after")  # outside a batch: one write and flush per event again
        assert (stream.writes, stream.flushes) == (2, 2)
    finally:
        audit.configure(force=True)


async def test_risk_check_events_are_on_disk_before_the_pending_row(
        router: Router, db: Session) -> None:
    """The router's risk_check events are written in one go, and flushed before the order's
    pending row is written (so before anything is sent)."""
    from sqlalchemy import event

    stream = CountingStream()
    audit.configure(fmt="json", stream=stream, force=True)
    seen_at_insert: list[str] = []

    def before_insert(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "INSERT INTO orders" in statement and not seen_at_insert:
            seen_at_insert.append(stream.flushed)

    engine = db.get_bind()
    event.listen(engine, "before_cursor_execute", before_insert)
    try:
        await router.route_order("scripted", MARKET_BUY, db, "alice")
    finally:
        event.remove(engine, "before_cursor_execute", before_insert)
        audit.configure(force=True)
    checks = [e for e in events(stream) if e["event"] == "risk_check"]
    assert len(checks) > 1
    flushed = [json.loads(line) for line in seen_at_insert[0].splitlines()]
    assert [e for e in flushed if e["event"] == "risk_check"] == checks
