"""One rounding rule for market steps, exact for every amount and price bagbot accepts.

Python's default 28-digit context raised ``InvalidOperation`` rounding
``12345678901.123456789012345678`` to a 1e-18 step: a value the payload parser accepts.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_UP, Context, Decimal

from hypothesis import given
from hypothesis import strategies as st

from bagbot_core.connector import Connector
from bagbot_core.money import MAX_SCALE, round_to_step, to_decimal
from bagbot_core.orders import Market, OrderRequest, OrderType, Side

#: Every value to_decimal accepts: 1e-18 up to (not including) 1e20, at most 18 places.
LARGEST = Decimal("99999999999999999999.999999999999999999")
accepted = st.decimals(min_value=Decimal("1e-18"), max_value=LARGEST, places=MAX_SCALE,
                       allow_nan=False, allow_infinity=False)
#: The checks' own arithmetic must not round either.
WIDE = Context(prec=80)
steps = st.sampled_from([Decimal(1).scaleb(-k) for k in range(MAX_SCALE + 1)]
                        + [Decimal("0.5"), Decimal("0.25"), Decimal("5"), Decimal("0.0001")])


def test_the_reported_value_rounds_instead_of_raising() -> None:
    value = to_decimal("12345678901.123456789012345678", "amount")
    assert round_to_step(value, Decimal("1e-18"), ROUND_DOWN) == value
    assert round_to_step(value, Decimal("0.01"), ROUND_DOWN) == Decimal("12345678901.12")
    assert round_to_step(value, Decimal("0.01"), ROUND_UP) == Decimal("12345678901.13")


@given(accepted, steps)
def test_rounding_down_is_exact_for_every_accepted_value(value: Decimal, step: Decimal) -> None:
    rounded = round_to_step(value, step, ROUND_DOWN)
    assert rounded <= value < WIDE.add(rounded, step)
    assert WIDE.remainder(rounded, step) == 0


@given(accepted, steps)
def test_rounding_up_is_exact_for_every_accepted_value(value: Decimal, step: Decimal) -> None:
    rounded = round_to_step(value, step, ROUND_UP)
    assert WIDE.subtract(rounded, step) < value <= rounded
    assert WIDE.remainder(rounded, step) == 0


class _Plain(Connector):
    """The core's default ``prepare_order``, nothing else."""

    async def load_markets(self, *, reload: bool = False):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    fetch_quote = create_order = fetch_order = cancel_order = load_markets  # type: ignore[assignment]


@given(accepted)
def test_prepare_order_never_raises_on_an_accepted_value(value: Decimal) -> None:
    market = Market("BTC/USDT", "BTC", "USDT", amount_step=Decimal("1e-18"),
                    price_step=Decimal("1e-18"))
    order = OrderRequest("BTC/USDT", Side.SELL, OrderType.LIMIT, value, value)
    prepared = _Plain().prepare_order(order, market)
    assert prepared.amount == value and prepared.price == value


def test_paper_uses_the_same_rule() -> None:
    from bagbot_core.paper import connector as paper

    assert paper._round_to_step is round_to_step
