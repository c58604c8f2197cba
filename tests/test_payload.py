"""Payload parsing and money: every refusal is an OrderValidationError, every value exact."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bagbot_core.errors import OrderValidationError
from bagbot_core.money import to_decimal
from bagbot_core.orders import OrderType, Side
from bagbot_core.payload import parse_order_payload

GOOD = {"symbol": "BTC/USDT", "side": "buy", "type": "limit", "amount": "0.5", "price": "100"}


def test_a_valid_limit_order() -> None:
    order = parse_order_payload({**GOOD, "symbol": " btc/usdt ", "side": "BUY",
                                 "params": {"timeInForce": "IOC"}})
    assert order.symbol == "BTC/USDT" and order.side is Side.BUY
    assert order.type is OrderType.LIMIT
    assert order.amount == Decimal("0.5") and order.price == Decimal("100")
    assert order.params == {"timeInForce": "IOC"}


def test_float_goes_through_str_not_binary() -> None:
    order = parse_order_payload({**GOOD, "amount": 0.1, "price": 0.3})
    assert order.amount == Decimal("0.1") and order.price == Decimal("0.3")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"amount": "NaN"}, "finite"),
        ({"amount": float("nan")}, "finite"),
        ({"amount": "inf"}, "finite"),
        ({"amount": "-Infinity"}, "finite"),
        ({"amount": "0"}, "greater than zero"),
        ({"amount": "-0"}, "greater than zero"),
        ({"amount": -1}, "greater than zero"),
        ({"amount": "abc"}, "not a number"),
        ({"amount": ""}, "not a number"),
        ({"amount": True}, "must be a number"),
        ({"amount": [1]}, "must be a number"),
        ({"amount": "1e999999"}, "too large"),
        ({"amount": "1e20"}, "too large"),
        ({"amount": "1e-19"}, "decimal places"),
        ({"amount": None}, "missing"),
        ({"price": None}, "needs a price"),
        ({"type": "market"}, "takes no price"),
        ({"type": "stop"}, "type must be"),
        ({"side": "hold"}, "side must be"),
        ({"symbol": "BTCUSDT"}, "BASE/QUOTE"),
        ({"symbol": "BTC/USDT/X"}, "BASE/QUOTE"),
        ({"symbol": "BTC/US DT"}, "BASE/QUOTE"),
        ({"symbol": "'; DROP TABLE orders;--/USDT"}, "BASE/QUOTE"),
        ({"symbol": "\u0412\u0422\u0421/USDT"}, "BASE/QUOTE"),  # Cyrillic look-alikes
        ({"symbol": 42}, "must be a string"),
        ({"prcie": "1"}, "unknown field"),
        ({"params": "x"}, "params"),
        ({"client_order_id": "has space"}, "client_order_id"),
        ({"client_order_id": "x" * 37}, "client_order_id"),
    ],
)
def test_bad_payloads_are_refused_clearly(change: dict[str, Any], message: str) -> None:
    with pytest.raises(OrderValidationError, match=message):
        parse_order_payload({**GOOD, **change})


@pytest.mark.parametrize("field", ["symbol", "side", "type", "amount"])
def test_missing_fields_are_named(field: str) -> None:
    payload = dict(GOOD)
    del payload[field]
    with pytest.raises(OrderValidationError, match=field):
        parse_order_payload(payload)


def test_non_mapping_payload() -> None:
    with pytest.raises(OrderValidationError, match="mapping"):
        parse_order_payload(["BTC/USDT"])


@given(st.decimals(min_value=Decimal("1e-18"), max_value=Decimal("99999999999999999999"),
                   places=18, allow_nan=False, allow_infinity=False))
def test_every_storable_decimal_round_trips_exactly(value: Decimal) -> None:
    for form in (value, str(value), format(value, "f")):
        assert to_decimal(form, "amount") == value


@given(st.integers(min_value=1, max_value=10**20 - 1))
def test_integers_are_exact(value: int) -> None:
    assert to_decimal(value, "amount") == Decimal(value)


scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["1e999999", "-0", "NaN", "sNaN", "0x10", "1_000", "١٢٣", "1e-999999"]),
)
payloads = st.dictionaries(
    st.sampled_from(["symbol", "side", "type", "amount", "price", "params", "client_order_id",
                     "extra", "prcie"]),
    st.one_of(scalar, st.sampled_from(["BTC/USDT", "buy", "sell", "market", "limit", "0.5"]),
              st.lists(scalar, max_size=2), st.dictionaries(st.text(max_size=5), scalar,
                                                            max_size=2)),
)


@given(payloads)
def test_any_payload_parses_or_raises_a_validation_error(payload: dict[str, Any]) -> None:
    try:
        order = parse_order_payload(payload)
    except OrderValidationError:
        return
    # Whatever got through is fully valid.
    assert order.amount > 0 and order.amount.is_finite()
    assert (order.price is not None) == (order.type is OrderType.LIMIT)
    if order.price is not None:
        assert order.price > 0 and order.price.is_finite()
