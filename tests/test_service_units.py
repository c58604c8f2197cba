"""The service's small parts on their own: settings, the rate limiter, idempotency keys,
money fields and the status map."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from bagbot_core.errors import (
    BagbotError,
    ConfigurationError,
    ExchangeOrderNotFoundError,
    ExchangeRejectedError,
    ExchangeUnavailableError,
    IdempotencyKeyReusedError,
    LiveTradingNotAllowedError,
    OrderNotFoundError,
    OrderStatusUnknownError,
    OrderValidationError,
    PluginLoadError,
    RateLimitedError,
    RiskCheckError,
    UnknownConnectorError,
)
from bagbot_core.payload import CLIENT_ORDER_ID_RE
from bagbot_core.service.auth import RateLimiter
from bagbot_core.service.config import ServiceSettings
from bagbot_core.service.errors import retry_after, status_for
from bagbot_core.service.routes_orders import client_order_id_for, utc_bound
from bagbot_core.service.schemas import OrderIn

ORDER = {"connector": "paper", "symbol": "BTC/USDT", "side": "buy", "type": "market",
         "amount": "0.01"}


def test_service_settings_defaults_and_environment() -> None:
    assert ServiceSettings.from_env({}) == ServiceSettings(
        rate_limit=20, max_body=65536, shutdown_grace=30, timeout=10, reconcile_interval=60)
    read = ServiceSettings.from_env({"BAGBOT_SERVICE_RATE_LIMIT": "5",
                                     "BAGBOT_SERVICE_MAX_BODY": "1024",
                                     "BAGBOT_SERVICE_SHUTDOWN_GRACE": "0",
                                     "BAGBOT_SERVICE_TIMEOUT": "3",
                                     "BAGBOT_RECONCILE_INTERVAL": "0"})
    assert read == ServiceSettings(5, 1024, 0, 3, 0) and read.burst == 10
    assert read.uvicorn_options()["timeout_graceful_shutdown"] == 0
    for name in ("BAGBOT_SERVICE_MAX_BODY", "BAGBOT_SERVICE_TIMEOUT"):
        with pytest.raises(ConfigurationError, match=name):
            ServiceSettings.from_env({name: "0"})


def test_service_settings_come_from_the_config_file_too(tmp_path: Path) -> None:
    path = tmp_path / "bagbot.toml"
    path.write_text("[settings]\nservice_rate_limit = 50\nreconcile_interval = 0\n")
    read = ServiceSettings.from_env({"BAGBOT_CONFIG": str(path),
                                     "BAGBOT_SERVICE_RATE_LIMIT": "7"})
    assert (read.rate_limit, read.reconcile_interval) == (7, 0)  # the environment wins


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_limiter_is_a_token_bucket_per_key() -> None:
    clock = Clock()
    limiter = RateLimiter(2, 4, clock=clock)
    assert [limiter.take("a") for _ in range(4)] == [0, 0, 0, 0]  # the burst
    assert limiter.take("a") == pytest.approx(0.5)  # one more in half a second
    assert limiter.take("b") == 0  # its own bucket
    clock.now += 0.5
    assert limiter.take("a") == 0
    clock.now += 100  # refills up to the burst, no further
    assert [limiter.take("a") for _ in range(5)][-1] > 0
    assert RateLimiter(0, 0, clock=clock).take("a") == 0  # off


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1,
               max_size=64))
def test_every_idempotency_key_becomes_one_valid_client_order_id(key: str) -> None:
    client_order_id = client_order_id_for(key)
    assert CLIENT_ORDER_ID_RE.fullmatch(client_order_id)
    assert client_order_id == client_order_id_for(key)
    if CLIENT_ORDER_ID_RE.fullmatch(key):
        assert client_order_id == key


@given(st.lists(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                        min_size=1, max_size=64), min_size=2, max_size=2, unique=True))
def test_different_keys_give_different_client_order_ids(keys: list[str]) -> None:
    assert client_order_id_for(keys[0]) != client_order_id_for(keys[1])


@given(st.one_of(st.floats(allow_nan=True), st.integers(), st.booleans(), st.none(),
                 st.text(max_size=30).filter(lambda t: not t.replace(".", "", 1).isdigit()
                                             or not t.isascii())))
def test_money_that_is_not_a_plain_decimal_string_is_refused(amount: object) -> None:
    with pytest.raises(ValidationError, match="decimal string"):
        OrderIn.model_validate({**ORDER, "amount": amount})


@given(st.from_regex(r"[0-9]{1,20}(\.[0-9]{1,18})?", fullmatch=True))
def test_plain_decimal_strings_pass_unchanged(amount: str) -> None:
    assert OrderIn.model_validate({**ORDER, "amount": amount}).amount == amount


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="prcie"):
        OrderIn.model_validate({**ORDER, "prcie": "1"})


@pytest.mark.parametrize(("error", "status"), [
    (IdempotencyKeyReusedError("x"), 409), (OrderValidationError("x"), 422),
    (RiskCheckError([]), 422), (ExchangeRejectedError("x"), 422),
    (OrderStatusUnknownError("x"), 202), (ExchangeUnavailableError("x"), 503),
    (RateLimitedError("x", 3), 503), (LiveTradingNotAllowedError("x"), 403),
    (UnknownConnectorError("x"), 422), (OrderNotFoundError("x"), 404),
    (ExchangeOrderNotFoundError("x"), 409), (ConfigurationError("x"), 500),
    (PluginLoadError("x"), 500), (BagbotError("x"), 500),
])
def test_the_status_map(error: BagbotError, status: int) -> None:
    assert status_for(error) == status


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert retry_after(RateLimitedError("x", 0.2)) == "1"
    assert retry_after(RateLimitedError("x", 6.1)) == "7"
    assert retry_after(RateLimitedError("x", float("inf"))) == "1"
    assert retry_after(ExchangeUnavailableError("x")) == "1"


#: Any offset a client may write (RFC 3339: -23:59 .. +23:59, to the minute).
offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes)))
#: A row's ``created_at``: any UTC time but the calendar's last microsecond, which stands in
#: for the times past it (no row is created then).
ROW_TIMES = st.datetimes(max_value=dt.datetime.max - dt.timedelta(microseconds=1),
                         timezones=st.just(dt.UTC))


@example(bound=dt.datetime(1, 1, 1, 0, 0, 9, tzinfo=dt.timezone(dt.timedelta(hours=6))),
         stored=dt.datetime(1, 1, 1, tzinfo=dt.UTC))
@example(bound=dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
         stored=dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC))
@given(bound=st.datetimes(timezones=offsets), stored=ROW_TIMES)
def test_a_list_bound_in_any_zone_selects_what_it_says(bound: dt.datetime,
                                                        stored: dt.datetime) -> None:
    """``since``/``until`` are compared with UTC rows: the bound in UTC never overflows (the
    first and last hours of the calendar in a far zone once did: a 500), and every row
    compares with it as with the time the client wrote."""
    utc = utc_bound(bound)
    assert utc is not None and utc.utcoffset() == dt.timedelta(0)
    assert (stored >= utc) == (stored >= bound)  # since: inclusive
    assert (stored < utc) == (stored < bound)  # until: exclusive
    assert utc_bound(bound.replace(tzinfo=None)) == bound.replace(tzinfo=dt.UTC)
    assert utc_bound(None) is None
