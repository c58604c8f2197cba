"""Order ``params`` are an allowlist: nothing in them may change the order the risk checks
approved, and anything a connector does not declare is refused before anything is sent.

The rules themselves (:mod:`bagbot_core.params`), then the router on a real database with
the ``paper`` connector (which declares nothing) and a paper variant that declares a few
params, so both outcomes of the property -- refused, or sent exactly as the row says -- are
reached. The same property runs against every connector in the conformance suite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from bagbot_core import hookimpl
from bagbot_core.connector import ConnectorSettings, ConnectorSpec
from bagbot_core.db import get_engine, session_factory
from bagbot_core.errors import ExchangeRejectedError, OrderValidationError, RiskCheckError
from bagbot_core.models import Order
from bagbot_core.orders import ExchangeOrder, OrderRequest, OrderType, Side
from bagbot_core.paper.connector import PaperConnector
from bagbot_core.params import (
    FORBIDDEN_PARAMS,
    MAX_PARAMS,
    NO_PARAMS,
    ParamKind,
    ParamSpec,
    declare_params,
    is_forbidden,
    params_to_send,
    validate_params,
)
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router
from bagbot_core.testing.conformance import params_dicts

D = Decimal
LIMIT = OrderType.LIMIT
DECLARED = declare_params(
    ParamSpec("timeInForce", choices={"GTC", "IOC"}, order_types={OrderType.LIMIT}),
    ParamSpec("postOnly", kind=ParamKind.BOOL),
    ParamSpec("tag", kind=ParamKind.TEXT),
    ParamSpec("icebergShare", kind=ParamKind.DECIMAL),
)
LIMIT_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "limit", "amount": "0.001",
             "price": "40000"}


def check(params: dict[str, Any], order_type: OrderType = LIMIT) -> dict[str, Any]:
    return validate_params(params, DECLARED, order_type=order_type, connector="test")


# -- the rules -----------------------------------------------------------------------------


def test_declared_params_pass_and_are_sent_in_their_plain_form() -> None:
    assert check({}) == {}
    assert check({"timeInForce": "IOC", "postOnly": False, "tag": "run-7",
                  "icebergShare": D("0.250")}) == {
        "timeInForce": "IOC", "postOnly": False, "tag": "run-7", "icebergShare": "0.25"}
    assert check({"icebergShare": "1E+1"}) == {"icebergShare": "10"}


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"quantity": "50"}, "'quantity' is refused"),
        ({"QuoteOrderQty": "900000"}, "'QuoteOrderQty' is refused"),
        ({"new_client_order_id": "evil1"}, "'new_client_order_id' is refused"),
        ({"\uff50\uff52\uff49\uff43\uff45": "1"}, "is refused"),  # fullwidth "price"
        ({"order-configuration": {}}, "is refused"),
        ({"TimeInForce": "GTC"}, "'TimeInForce' is not accepted by test (accepted: "
                                 "icebergShare, postOnly, tag, timeInForce)"),
        ({"timeInForce": "gtc"}, "must be one of GTC, IOC"),
        ({"timeInForce": "FOK"}, "must be one of GTC, IOC"),
        ({"timeInForce": ["GTC"]}, "must be a string, got list"),
        ({"postOnly": "true"}, "must be true or false, got str"),
        ({"postOnly": 1}, "must be true or false, got int"),
        ({"tag": ""}, "printable ASCII"),
        ({"tag": "x" * 65}, "printable ASCII"),
        ({"tag": "caf\u00e9"}, "printable ASCII"),
        ({"tag": "a\x1b[31mb"}, "printable ASCII"),
        ({"icebergShare": 0.25}, "not a float"),
        ({"icebergShare": "-1"}, "greater than zero"),
        ({"icebergShare": "NaN"}, "icebergShare"),
        ({"icebergShare": True}, "icebergShare"),
    ],
)
def test_everything_else_is_refused_naming_the_key(params: dict[str, Any], words: str) -> None:
    with pytest.raises(OrderValidationError, match="params") as info:
        check(params)
    assert words in str(info.value)


def test_a_param_for_other_order_types_is_refused() -> None:
    assert check({"timeInForce": "GTC"}, LIMIT) == {"timeInForce": "GTC"}
    with pytest.raises(OrderValidationError, match="applies to limit orders only, not market"):
        check({"timeInForce": "GTC"}, OrderType.MARKET)


def test_nothing_is_accepted_where_nothing_is_declared() -> None:
    with pytest.raises(OrderValidationError, match=r"not accepted by paper \(accepted: none\)"):
        validate_params({"timeInForce": "GTC"}, NO_PARAMS, order_type=LIMIT, connector="paper")


def test_hostile_keys_are_cut_and_escaped_in_the_message() -> None:
    hostile = "\x1b]0;pwned\x07\u202e" + "k" * 500
    with pytest.raises(OrderValidationError) as info:
        check({hostile: 1})
    message = str(info.value)
    assert message.isascii() and message.isprintable()
    assert "\\x1b]0;pwned" in message and "k" * 41 not in message and "..." in message


def test_too_many_params_are_refused() -> None:
    many = {f"k{i}": i for i in range(MAX_PARAMS + 1)}
    with pytest.raises(OrderValidationError, match=f"at most {MAX_PARAMS}"):
        check(many)


@pytest.mark.parametrize("name", ["quantity", "clientOrderId", "client_order_id", "Price",
                                  "stop-price", "product_id", "cost", "symbol"])
def test_a_connector_cannot_declare_what_changes_the_order(name: str) -> None:
    assert is_forbidden(name)
    with pytest.raises(ValueError, match="would change the order itself"):
        declare_params(ParamSpec(name))
    # ... nor sneak it in without declare_params: the router refuses it all the same.
    with pytest.raises(OrderValidationError, match="is refused"):
        validate_params({name: "1"}, {name: ParamSpec(name)}, order_type=LIMIT, connector="x")


def test_forbidden_names_cover_every_field_of_the_order() -> None:
    for field in ("symbol", "side", "type", "amount", "cost", "price", "stopprice",
                  "triggerprice", "clientorderid", "newclientorderid", "quantity",
                  "quoteorderqty", "orderconfiguration", "productid"):
        assert field in FORBIDDEN_PARAMS
    for allowed in ("timeInForce", "postOnly", "selfTradePreventionMode"):
        assert not is_forbidden(allowed)


def test_a_connector_refuses_params_handed_to_it_directly() -> None:
    order = OrderRequest("BTC/USDT", Side.BUY, LIMIT, D("0.001"), D("40000"),
                         params={"quantity": "50"})
    with pytest.raises(ExchangeRejectedError, match="nothing was sent"):
        params_to_send(order, DECLARED, connector="test")


# -- through the router ----------------------------------------------------------------------


class DeclaringPaper(PaperConnector):
    """Paper that declares a few params (and, like paper, ignores them); every request it is
    handed is recorded: for an in-process exchange, being called is receiving it."""

    allowed_params = DECLARED
    received: list[tuple[OrderRequest, str]] = []

    async def create_order(self, order: OrderRequest, client_order_id: str) -> ExchangeOrder:
        self.received.append((order, client_order_id))
        return await super().create_order(order, client_order_id)


class _Plugin:
    @hookimpl
    def bagbot_add_connectors(self) -> list[ConnectorSpec]:
        def factory(settings: ConnectorSettings) -> PaperConnector:
            return DeclaringPaper(settings)

        return [ConnectorSpec("declaring", factory, "paper that declares params")]


@pytest.fixture
async def router() -> AsyncIterator[Router]:
    registry = PluginRegistry(disabled=(), load_entrypoints=False,
                              plugins=[("declaring", _Plugin())])
    r = Router(registry, limits=RiskLimits(), allow_live=False)
    yield r
    await r.aclose()


@pytest.fixture
def db(sqlite_url: str) -> Iterator[Session]:
    session = session_factory(get_engine(sqlite_url))()
    yield session
    session.close()


@pytest.fixture(autouse=True)
def _fresh_record() -> Iterator[None]:
    DeclaringPaper.received = []
    yield
    DeclaringPaper.received = []


async def test_params_are_checked_before_markets_and_risk_checks(
    router: Router, db: Session
) -> None:
    """An order that would also fail every risk check is refused for its params: nothing
    was asked of the exchange, the row says why."""
    payload = {"symbol": "NOPE/USDT", "side": "buy", "type": "market", "amount": "5000",
               "params": {"quantity": "50"}}
    with pytest.raises(OrderValidationError, match="'quantity' is refused") as info:
        await router.route_order("paper", payload, db, "mallory")
    order = info.value.order
    assert (order.status, order.qty, order.symbol) == ("rejected", D("5000"), "NOPE/USDT")
    assert order.details["error"] == "OrderValidationError" and "violations" not in order.details
    assert db.query(Order).count() == 1
    # Without the params, the risk checks speak.
    with pytest.raises(RiskCheckError):
        await router.route_order("paper", {**payload, "params": {}}, db, "mallory")


async def test_declared_params_reach_the_connector_in_their_checked_form(
    router: Router, db: Session
) -> None:
    params = {"timeInForce": "GTC", "postOnly": True, "icebergShare": D("0.50")}
    order = await router.route_order("declaring", {**LIMIT_BUY, "params": params}, db, "a")
    ((request, cid),) = DeclaringPaper.received
    assert cid == order.client_order_id
    assert dict(request.params) == {"timeInForce": "GTC", "postOnly": True,
                                    "icebergShare": "0.5"}


async def test_paper_accepts_no_params(router: Router, db: Session) -> None:
    with pytest.raises(OrderValidationError, match=r"accepted: none"):
        await router.route_order("paper", {**LIMIT_BUY, "params": {"timeInForce": "GTC"}},
                                 db, "a")


@pytest.mark.parametrize("connector", ["paper", "declaring"])
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_params_either_refused_before_sending_or_sent_exactly_as_the_row_says(
    router: Router, db: Session, connector: str, data: st.DataObject
) -> None:
    allowed = DECLARED if connector == "declaring" else NO_PARAMS
    params = data.draw(params_dicts(allowed), label="params")
    rows_before = db.query(Order).count()
    received_before = len(DeclaringPaper.received)
    try:
        order = await router.route_order(connector, {**LIMIT_BUY, "params": params}, db, "u")
        refused = False
    except OrderValidationError as error:
        order, refused = error.order, True
    event("refused" if refused else "sent")
    assert db.query(Order).count() == rows_before + 1
    undeclared = [k for k in params if k not in allowed or is_forbidden(k)]
    assert refused or not undeclared, undeclared
    if refused:
        assert order.status == "rejected" and order.external_id is None
        assert len(DeclaringPaper.received) == received_before
        return
    if connector == "declaring":
        ((request, cid),) = DeclaringPaper.received[received_before:]
        assert (request.symbol, request.side.value, request.type.value, request.amount,
                request.price, cid) == (order.symbol, order.side, order.order_type, order.qty,
                                        order.price, order.client_order_id)
        assert set(request.params) <= set(DECLARED)
    assert order.status == "open" and order.external_id
