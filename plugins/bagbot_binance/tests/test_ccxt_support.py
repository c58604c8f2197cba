"""The shared ccxt machinery on its own: error classification, scrubbing, Retry-After."""

from __future__ import annotations

import email.utils
import time

import pytest
from ccxt.base import errors as ce

from bagbot_core.ccxt_support import (
    classify_ccxt_error,
    decimal_or_none,
    parse_retry_after,
    scrub_secrets,
)
from bagbot_core.errors import (
    ExchangeOrderNotFoundError,
    ExchangeRejectedError,
    ExchangeUnavailableError,
    RateLimitedError,
)
from bagbot_core.secrets import Secret


@pytest.mark.parametrize(
    ("exc_class", "expected"),
    [
        # subclasses first: OrderNotFound is an InvalidOrder in ccxt
        (ce.OrderNotFound, ExchangeOrderNotFoundError),
        # DDoSProtection / RateLimitExceeded / RequestTimeout are NetworkErrors in ccxt
        (ce.DDoSProtection, RateLimitedError),
        (ce.RateLimitExceeded, RateLimitedError),
        (ce.RequestTimeout, ExchangeUnavailableError),
        (ce.ExchangeNotAvailable, ExchangeUnavailableError),
        (ce.OnMaintenance, ExchangeUnavailableError),
        (ce.NetworkError, ExchangeUnavailableError),
        (ce.InvalidNonce, ExchangeRejectedError),
        (ce.InvalidOrder, ExchangeRejectedError),
        (ce.OrderImmediatelyFillable, ExchangeRejectedError),
        (ce.DuplicateOrderId, ExchangeRejectedError),
        (ce.InsufficientFunds, ExchangeRejectedError),
        (ce.BadRequest, ExchangeRejectedError),
        (ce.BadSymbol, ExchangeRejectedError),
        (ce.AuthenticationError, ExchangeRejectedError),
        (ce.PermissionDenied, ExchangeRejectedError),
        (ce.AccountSuspended, ExchangeRejectedError),
        (ce.MarketClosed, ExchangeRejectedError),
        (ce.BadResponse, ExchangeUnavailableError),
        (ce.NullResponse, ExchangeUnavailableError),
        (ce.OperationFailed, ExchangeUnavailableError),
        (ce.ExchangeError, ExchangeUnavailableError),
        (ValueError, ExchangeUnavailableError),
    ],
)
def test_ccxt_errors_map_onto_the_core_hierarchy(
    exc_class: type[Exception], expected: type[Exception]
) -> None:
    error = classify_ccxt_error(exc_class('binance {"code":-1,"msg":"boom"}'), name="binance")
    assert type(error) is expected
    assert "boom (code -1)" in str(error)


def test_rate_limit_reads_retry_after_from_the_last_response_headers() -> None:
    class FakeExchange:
        id = "binance"
        last_response_headers = {"retry-after": "7"}

    error = classify_ccxt_error(ce.DDoSProtection("binance 429"), exchange=FakeExchange())
    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 7


def test_messages_are_scrubbed_of_credentials() -> None:
    text = ("binance GET http://127.0.0.1:1/api/v3/order?symbol=BTCUSDT&timestamp=1"
            "&signature=abcdef0123 {'X-MBX-APIKEY': 'KEY-42'} secret SEKRIT")
    error = classify_ccxt_error(ce.RequestTimeout(text), name="binance",
                                secrets=[Secret("KEY-42"), Secret("SEKRIT")])
    assert "abcdef0123" not in str(error)
    assert "KEY-42" not in str(error)
    assert "SEKRIT" not in str(error)
    assert "symbol=BTCUSDT" in str(error)


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer eyJhbGciOi.payload.sig",
        "{'CB-ACCESS-SIGN': 'c2lnbmF0dXJl'}",
        "body=a=1&signature=ff00&b=2",
        "api_key=live-key&x=1",
    ],
)
def test_scrub_masks_auth_headers_and_signed_params(text: str) -> None:
    scrubbed = scrub_secrets(text)
    for leaked in ("eyJhbGciOi", "c2lnbmF0dXJl", "ff00", "live-key"):
        assert leaked not in scrubbed
    assert "***" in scrubbed


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after({"Retry-After": "2"}) == 2
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({}) is None
    assert parse_retry_after({"Retry-After": "soon"}) is None
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    seconds = parse_retry_after({"Retry-After": future})
    assert seconds is not None
    assert 25 < seconds <= 30


def test_ccxt_floats_become_exact_decimals_through_str() -> None:
    assert str(decimal_or_none(0.1)) == "0.1"
    assert str(decimal_or_none(1e-05)) == "0.00001"
    assert str(decimal_or_none("50000.00000000")) == "50000"
    assert decimal_or_none(None) is None
    assert decimal_or_none(float("nan")) is None
    assert decimal_or_none(True) is None
