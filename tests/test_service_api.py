"""``bagbot serve``'s HTTP API over real HTTP: uvicorn on loopback, httpx as the client, the
real router and store on a SQLite file and on the PostgreSQL server.

The exchange behind the ``scripted`` connector is the tests' scriptable exchange
(tests/scripted.py); ``paper`` is bagbot's built-in one; ``flaky`` is a test exchange whose
reads can be made to fail and whose factory can be made to refuse its configuration.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import attrs
import httpx
import pytest
from sqlalchemy import select, update

from bagbot_core import hookimpl
from bagbot_core.connector import Connector, ConnectorSettings, ConnectorSpec
from bagbot_core.db import get_engine, session_factory
from bagbot_core.errors import RateLimitedError
from bagbot_core.models import ApiToken, Order, utcnow
from bagbot_core.orders import ExchangeOrder
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router
from bagbot_core.service.app import create_app
from bagbot_core.service.config import ServiceSettings
from bagbot_core.tokens import revoke_token
from tests.scripted import ScriptedConnector, ScriptedExchange, scripted_plugin
from tests.service_helpers import Served, freeze_rate_limits, make_token, serve_in_thread

MARKET = {"connector": "scripted", "symbol": "BTC/USDT", "side": "buy", "type": "market",
          "amount": "0.01"}
PAPER = {**MARKET, "connector": "paper"}
ERROR_KEYS = {"type", "message", "details", "order"}


@attrs.define
class Flaky:
    """What the ``flaky`` exchange does next."""

    read_error: Exception | None = None
    factory_error: Exception | None = None


class FlakyConnector(ScriptedConnector):
    name = "flaky"

    def __init__(self, exchange: ScriptedExchange, settings: ConnectorSettings,
                 flaky: Flaky) -> None:
        super().__init__(exchange, settings)
        self.flaky = flaky

    async def fetch_order(self, symbol: str, *, external_id: str | None,
                          client_order_id: str) -> ExchangeOrder:
        if self.flaky.read_error is not None:
            raise self.flaky.read_error
        return await super().fetch_order(symbol, external_id=external_id,
                                         client_order_id=client_order_id)


def flaky_plugin(exchange: ScriptedExchange, flaky: Flaky) -> object:
    class Plugin:
        @hookimpl
        def bagbot_add_connectors(self) -> list[ConnectorSpec]:
            def factory(settings: ConnectorSettings) -> Connector:
                if flaky.factory_error is not None:
                    raise flaky.factory_error
                return FlakyConnector(exchange, settings, flaky)

            return [ConnectorSpec("flaky", factory, "a test exchange whose reads fail")]

    return Plugin()


@attrs.define
class Api:
    """A running service and what the tests look at behind it."""

    served: Served
    db_url: str
    exchange: ScriptedExchange
    flaky: Flaky
    router: Router

    def token(self, user: str, **kwargs: Any) -> str:
        return make_token(self.db_url, user, **kwargs)

    def client(self, token: str | None = None) -> httpx.Client:
        return self.served.client(token)

    def rows(self) -> list[Order]:
        with session_factory(get_engine(self.db_url))() as session:
            return list(session.scalars(select(Order).order_by(Order.id)))

    def row(self, order_id: int) -> Order:
        with session_factory(get_engine(self.db_url))() as session:
            order = session.get(Order, order_id)
            assert order is not None
            return order


@contextlib.contextmanager
def running(db_url: str, *, settings: ServiceSettings | None = None,
            allow_live: bool = False, limits: RiskLimits | None = None) -> Iterator[Api]:
    exchange, flaky = ScriptedExchange(), Flaky()
    registry = PluginRegistry(disabled=(), load_entrypoints=False, plugins=[
        ("scripted", scripted_plugin(exchange)), ("flaky", flaky_plugin(exchange, flaky))])
    router = Router(registry, limits=limits or RiskLimits(), allow_live=allow_live)
    settings = settings or ServiceSettings(rate_limit=0)
    app = create_app(settings, database_url=db_url, router=router)
    with serve_in_thread(app, settings) as served:
        yield Api(served, db_url, exchange, flaky, router)


@pytest.fixture
def api(db_url: str) -> Iterator[Api]:
    with running(db_url) as served:
        yield served


@contextlib.contextmanager
def another_instance(api: Api, *plugins: tuple[str, object]) -> Iterator[Served]:
    """A second service on ``api``'s database and exchange, with a router, idempotency key
    locks and engine of its own: what another ``bagbot serve`` process would have."""
    registry = PluginRegistry(disabled=(), load_entrypoints=False, plugins=[
        ("scripted", scripted_plugin(api.exchange)), *plugins])
    settings = ServiceSettings(rate_limit=0)
    router = Router(registry, limits=RiskLimits(), allow_live=False)
    with serve_in_thread(create_app(settings, database_url=api.db_url, router=router),
                         settings) as served:
        yield served


class HoldBeforeInsert:
    """A plugin that holds its instance's route after the idempotency key's lookup found no
    row and before the insert, until released: the window in which another instance can
    insert the same key first."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()

    @hookimpl
    def bagbot_before_route(self, connector: str, user_id: str, order: object) -> None:
        self.reached.set()
        self.release.wait(60)


def assert_error(response: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == ERROR_KEYS, body
    assert body["type"] == type_, body
    assert isinstance(body["message"], str) and body["message"]
    return body  # type: ignore[no-any-return]


def as_api_json(order: Order) -> dict[str, Any]:
    """What ``bagbot orders show --json`` prints for the row, as JSON values."""
    return json.loads(json.dumps(order.view().as_dict(), default=str))  # type: ignore[no-any-return]


# -- routing ---------------------------------------------------------------------------------


def test_route_a_paper_order_over_http(api: Api) -> None:
    with api.client(api.token("alice")) as client:
        response = client.post("/v1/orders", json=PAPER)
        assert response.status_code == 201, response.text
        order = response.json()
        assert (order["status"], order["user_id"], order["connector"]) == (
            "filled", "alice", "paper")
        assert order["filled_qty"] == "0.01" and isinstance(order["avg_price"], str)
        assert order == as_api_json(api.row(order["id"]))
        assert client.get(f"/v1/orders/{order['id']}").json() == order


def test_concurrent_paper_orders_all_complete(api: Api) -> None:
    """The paper book's database calls run off the event loop: one request waiting for
    SQLite's write lock must not stall the others (which hold it)."""
    tokens = [api.token(f"user{n}") for n in range(8)]

    def send(token: str) -> httpx.Response:
        with api.client(token) as client:
            return client.post("/v1/orders", json=PAPER)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(send, tokens))
    assert [r.status_code for r in responses] == [201] * 8, [r.text for r in responses]
    assert {o.status for o in api.rows()} == {"filled"}


def test_a_limit_order_rests_then_is_canceled_and_synced(api: Api) -> None:
    body = {**MARKET, "type": "limit", "price": "40000.5"}
    with api.client(api.token("alice")) as client:
        order = client.post("/v1/orders", json=body).json()
        assert (order["status"], order["price"]) == ("open", "40000.5")
        synced = client.post(f"/v1/orders/{order['id']}/sync")
        assert synced.status_code == 200 and synced.json()["status"] == "open"
        canceled = client.post(f"/v1/orders/{order['id']}/cancel")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        again = client.post(f"/v1/orders/{order['id']}/cancel")
        body = assert_error(again, 422, "ExchangeRejectedError")
        assert body["order"]["status"] == "canceled" and "nothing to cancel" in body["message"]
    assert api.row(order["id"]).status == "canceled"


def test_an_idempotent_retry_returns_the_same_row(api: Api) -> None:
    headers = {"Idempotency-Key": "retry-1"}
    with api.client(api.token("alice")) as client:
        first = client.post("/v1/orders", json=MARKET, headers=headers)
        again = client.post("/v1/orders", json=MARKET, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == again.json()
    assert first.json()["client_order_id"] == "retry-1"
    assert len(api.rows()) == 1 and api.exchange.create_calls == 1


def test_any_printable_key_works_and_maps_to_one_client_order_id(api: Api) -> None:
    key = "order #42 / 2024-05-01 {retry}"
    with api.client(api.token("alice")) as client:
        first = client.post("/v1/orders", json=MARKET, headers={"Idempotency-Key": key})
        again = client.post("/v1/orders", json=MARKET, headers={"Idempotency-Key": key})
        bad = client.post("/v1/orders", json=MARKET, headers={"Idempotency-Key": "x" * 65})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert first.json()["client_order_id"].startswith("ik")
    assert_error(bad, 422, "ValidationError")
    assert len(api.rows()) == 1


def test_twenty_concurrent_retries_of_one_key_make_one_order(api: Api) -> None:
    """Sent to two instances at once (each with its own key locks): one 201, the call that
    created the order; 200 for every other, in either instance."""
    token = api.token("alice")
    api.exchange.script("rest")

    with another_instance(api) as other:
        def send(n: int) -> httpx.Response:
            with (api.served if n % 2 else other).client(token) as client:
                return client.post("/v1/orders", json={**MARKET, "type": "limit",
                                                       "price": "40000"},
                                   headers={"Idempotency-Key": "burst"})

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(send, range(20)))
    assert sorted(r.status_code for r in responses) == [200] * 19 + [201], [
        r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert len(api.rows()) == 1
    assert api.exchange.create_calls == 1 and len(api.exchange.placed) == 1


def test_a_retry_that_loses_the_insert_to_another_instance_is_200(api: Api) -> None:
    """Instance B looks the key up (no row yet) and is held there; instance A creates the
    order (201); then B's insert finds the key taken and B answers 200 with A's order. A
    lookup of the key before routing cannot tell: B's found no row, and answered 201."""
    gate = HoldBeforeInsert()
    token = api.token("alice")
    headers = {"Idempotency-Key": "raced"}
    with another_instance(api, ("gate", gate)) as instance_b, \
            concurrent.futures.ThreadPoolExecutor(1) as pool, \
            instance_b.client(token) as client_b, api.client(token) as client_a:
        late = pool.submit(client_b.post, "/v1/orders", json=MARKET, headers=headers)
        try:
            assert gate.reached.wait(60), "instance B did not start routing"
            first = client_a.post("/v1/orders", json=MARKET, headers=headers)
        finally:
            gate.release.set()
        second = late.result(60)
    assert (first.status_code, second.status_code) == (201, 200), second.text
    assert second.json() == first.json()
    assert len(api.rows()) == 1 and api.exchange.create_calls == 1


def test_a_key_reused_for_another_order_or_by_another_user_is_409(api: Api) -> None:
    headers = {"Idempotency-Key": "mine"}
    with api.client(api.token("alice")) as alice, api.client(api.token("bob")) as bob:
        first = alice.post("/v1/orders", json=MARKET, headers=headers).json()
        other = alice.post("/v1/orders", json={**MARKET, "side": "sell"}, headers=headers)
        stolen = bob.post("/v1/orders", json=MARKET, headers=headers)
        checked = bob.post("/v1/orders/check", json=MARKET, headers=headers)
    for response in (other, stolen, checked):
        body = assert_error(response, 409, "IdempotencyKeyReusedError")
        assert body["order"] is None
        assert str(first["id"]) not in body["message"]  # never names another's order
    assert len(api.rows()) == 1


def test_check_runs_every_check_and_writes_nothing(api: Api) -> None:
    with api.client(api.token("alice")) as client:
        ok = client.post("/v1/orders/check", json=MARKET)
        refused = client.post("/v1/orders/check", json={**MARKET, "amount": "11"})
    assert ok.status_code == 200 and ok.json() == {"ok": True, "violations": []}
    body = refused.json()
    assert refused.status_code == 200 and body["ok"] is False
    assert {v["check"] for v in body["violations"]} == {"max_quantity", "max_value"}
    assert set(body["violations"][0]) == {"check", "reason", "limit", "actual"}
    assert api.rows() == [] and api.exchange.create_calls == 0


# -- the status map --------------------------------------------------------------------------


def test_a_risk_refusal_is_422_with_its_violations_and_row(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny limit comes from the environment, as an operator would set it."""
    monkeypatch.setenv("BAGBOT_MAX_ORDER_QTY", "0.001")
    monkeypatch.setenv("BAGBOT_MIN_ORDER_QTY", "0.0001")
    settings = ServiceSettings(rate_limit=0)
    with serve_in_thread(create_app(settings, database_url=db_url), settings) as served, \
            served.client(make_token(db_url, "alice")) as client:
        response = client.post("/v1/orders", json=PAPER)
        limits = client.get("/v1/risk").json()["limits"]
    body = assert_error(response, 422, "RiskCheckError")
    assert [v["check"] for v in body["details"]["violations"]] == ["max_quantity"]
    assert body["details"]["violations"][0]["limit"] == "0.001"
    assert body["order"]["status"] == "rejected" and body["order"]["user_id"] == "alice"
    quantity = next(c for c in limits["checks"] if c["limit"] == "max_order_qty")
    assert (quantity["value"], quantity["source"]) == ("0.001", "env BAGBOT_MAX_ORDER_QTY")


def test_an_exchange_rejection_is_422_with_the_rejected_row(api: Api) -> None:
    api.exchange.script("reject")
    with api.client(api.token("alice")) as client:
        body = assert_error(client.post("/v1/orders", json=MARKET), 422,
                            "ExchangeRejectedError")
    assert body["order"]["status"] == "rejected"
    assert "insufficient balance" in body["message"]


def test_an_unknown_outcome_is_202_with_the_unknown_row_and_reconcile_resolves_it(
        api: Api) -> None:
    api.exchange.script("timeout_after_accept")
    with api.client(api.token("alice")) as client, \
            api.client(api.token("root", admin=True)) as admin:
        response = client.post("/v1/orders", json=MARKET)
        assert response.status_code == 202, response.text
        body = response.json()
        assert set(body) == ERROR_KEYS and body["type"] == "OrderStatusUnknownError"
        assert body["order"]["status"] == "unknown" and "do not resend" in body["message"]
        resolved = admin.post("/v1/reconcile", json={"connector": "scripted",
                                                     "grace_seconds": "0"})
    assert resolved.status_code == 200, resolved.text
    assert [(o["id"], o["status"]) for o in resolved.json()["orders"]] == [
        (body["order"]["id"], "filled")]
    assert api.exchange.create_calls == 1


def test_an_unreachable_exchange_is_503_with_retry_after(api: Api) -> None:
    with api.client(api.token("alice")) as client:
        order = client.post("/v1/orders", json={**MARKET, "connector": "flaky"}).json()
        api.flaky.read_error = RateLimitedError("slow down", retry_after=6.5)
        response = client.post(f"/v1/orders/{order['id']}/sync")
    body = assert_error(response, 503, "RateLimitedError")
    assert response.headers["Retry-After"] == "7"
    assert body["order"]["id"] == order["id"] and body["order"]["status"] == "filled"


def test_an_order_the_exchange_forgot_is_409_on_sync(api: Api) -> None:
    with api.client(api.token("alice")) as client:
        order = client.post("/v1/orders", json=MARKET).json()
        api.exchange.placed.clear()
        assert_error(client.post(f"/v1/orders/{order['id']}/sync"), 409,
                     "ExchangeOrderNotFoundError")


def test_validation_errors_are_422(api: Api) -> None:
    with api.client(api.token("alice")) as client:
        symbol = client.post("/v1/orders", json={**MARKET, "symbol": "BTCUSDT"})
        connector = client.post("/v1/orders", json={**MARKET, "connector": "nosuch"})
        extra = client.post("/v1/orders", json={**MARKET, "prcie": "1"})
        price = client.post("/v1/orders", json={**MARKET, "price": "1"})
        testnet = client.post("/v1/orders", json={**MARKET, "testnet": "false"})
    body = assert_error(symbol, 422, "OrderValidationError")
    assert body["order"]["status"] == "rejected"
    assert_error(connector, 422, "UnknownConnectorError")
    assert "prcie" in assert_error(extra, 422, "ValidationError")["message"]
    assert_error(price, 422, "OrderValidationError")  # a market order takes no price
    assert_error(testnet, 422, "ValidationError")


@pytest.mark.parametrize("amount", [0.01, 1, 1e-3, True, None, [], {}, "0,01", "1e-3",
                                    "-1", " 1", "\u0661"])
def test_money_must_be_a_decimal_string(api: Api, amount: object) -> None:
    with api.client(api.token("alice")) as client:
        body = assert_error(client.post("/v1/orders", json={**MARKET, "amount": amount}),
                            422, "ValidationError")
        price = client.post("/v1/orders", json={**MARKET, "type": "limit",
                                                "price": amount or 0.5})
        params = client.post("/v1/orders", json={**MARKET, "params": {"stop": 1.5}})
    assert "money is a decimal string" in body["message"]
    assert_error(price, 422, "ValidationError")
    assert "money is a decimal string" in assert_error(params, 422, "ValidationError")["message"]
    assert api.rows() == [] and api.exchange.create_calls == 0


def test_malformed_json_is_422_in_the_error_shape(api: Api) -> None:
    with api.client(api.token("alice")) as client:
        response = client.post("/v1/orders", content=b'{"symbol": ',
                               headers={"Content-Type": "application/json"})
        not_object = client.post("/v1/orders", json=["a"])
    body = assert_error(response, 422, "ValidationError")
    assert "not valid JSON" in body["message"]
    assert_error(not_object, 422, "ValidationError")


def test_a_misconfigured_connector_is_500_without_details(api: Api) -> None:
    api.flaky.factory_error = ValueError("api_secret=hunter2hunter2 is not base64")
    with api.client(api.token("alice")) as client:
        body = assert_error(client.post("/v1/orders", json={**MARKET, "connector": "flaky"}),
                            500, "ConfigurationError")
    assert body["message"].startswith("the server is misconfigured")
    assert "hunter2hunter2" not in json.dumps(body)


def test_unknown_routes_and_methods_answer_in_the_error_shape(api: Api) -> None:
    with api.client(api.token("alice")) as client:
        assert_error(client.get("/v1/nothing"), 404, "NotFound")
        assert_error(client.get("/v1/orders/999999"), 404, "OrderNotFoundError")
        assert_error(client.get("/v1/orders/abc"), 422, "ValidationError")
        method = client.delete("/v1/orders")
    assert_error(method, 405, "MethodNotAllowed")
    assert method.headers["Allow"]


def test_health_probes_and_the_openapi_document_need_no_token(api: Api) -> None:
    with api.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready"}
        document = client.get("/openapi.json").json()
    assert {"/v1/orders", "/v1/orders/check", "/v1/orders/{order_id}", "/v1/reconcile",
            "/v1/halt", "/v1/risk", "/v1/plugins"} <= set(document["paths"])
    amount = document["components"]["schemas"]["OrderIn"]["properties"]["amount"]
    assert amount["type"] == "string" and "pattern" in amount


def test_metrics_need_no_token_and_name_no_user(api: Api) -> None:
    with api.client(api.token("alice-metrics")) as client:
        assert client.post("/v1/orders", json=MARKET).status_code == 201
        client.get("/v1/orders/424242")
    with api.client() as anonymous:
        response = anonymous.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith(
        "text/plain")
    text = response.text
    assert 'bagbot_http_requests_total{code="201",method="POST",route="/v1/orders"}' in text
    assert 'route="/v1/orders/{order_id}"' in text and "424242" not in text
    assert 'bagbot_orders_total{connector="scripted",status="filled"}' in text
    assert "alice-metrics" not in text


# -- authentication and authorization ---------------------------------------------------------


def test_no_malformed_unknown_expired_or_revoked_token_is_401(api: Api) -> None:
    good = api.token("alice")
    expired = api.token("alice", expires_in=dt.timedelta(hours=1))
    revoked = api.token("alice")
    with api.client(expired) as client:
        assert client.get("/v1/orders").status_code == 200  # verified and cached
    with session_factory(get_engine(api.db_url))() as session:
        assert revoke_token(session, revoked.split("_")[1])
        session.execute(update(ApiToken).where(ApiToken.id == expired.split("_")[1])
                        .values(expires_at=utcnow() - dt.timedelta(seconds=1)))
        session.commit()
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    unknown = "bgt_" + "a" * 12 + good[16:]
    with api.client() as client:
        assert client.get("/v1/orders", headers={"Authorization": f"Bearer {good}"}
                          ).status_code == 200
        for headers in ({}, {"Authorization": good}, {"Authorization": f"Basic {good}"},
                        {"Authorization": "Bearer"}, {"Authorization": "Bearer nonsense"},
                        {"Authorization": f"Bearer {forged}"},
                        {"Authorization": f"Bearer {unknown}"},
                        {"Authorization": f"Bearer {expired}"},
                        {"Authorization": f"Bearer {revoked}"}):
            response = client.get("/v1/orders", headers=headers)
            assert_error(response, 401, "Unauthorized")
            assert response.headers["WWW-Authenticate"] == "Bearer"
        missing = assert_error(client.post("/v1/orders", json=MARKET), 401, "Unauthorized")
        assert "***" not in missing["message"] and "Authorization header" in missing["message"]
    assert api.rows() == []


def test_another_users_order_is_404_on_every_order_route(api: Api) -> None:
    with api.client(api.token("alice")) as alice, api.client(api.token("bob")) as bob, \
            api.client(api.token("root", admin=True)) as admin:
        order = alice.post("/v1/orders", json={**MARKET, "type": "limit",
                                               "price": "40000"}).json()
        missing = bob.get("/v1/orders/987654").json()
        for method, path in (("GET", ""), ("POST", "/cancel"), ("POST", "/sync")):
            response = bob.request(method, f"/v1/orders/{order['id']}{path}")
            body = assert_error(response, 404, "OrderNotFoundError")
            assert body["message"] == missing["message"].replace("987654", str(order["id"]))
        assert bob.get("/v1/orders").json()["orders"] == []
        assert admin.get(f"/v1/orders/{order['id']}").json() == order
        assert [o["id"] for o in admin.get("/v1/orders").json()["orders"]] == [order["id"]]
        assert admin.get("/v1/orders", params={"user": "bob"}).json()["orders"] == []
    assert api.row(order["id"]).status == "open"  # bob's cancel never reached it


def test_admin_routes_refuse_user_tokens(api: Api) -> None:
    with api.client(api.token("alice")) as client:
        for path, body in (("/v1/reconcile", {"connector": "scripted"}),
                           ("/v1/halt", {"reason": "x"}), ("/v1/reduce", {"reason": "x"}),
                           ("/v1/resume", {"reason": "x"})):
            assert_error(client.post(path, json=body), 403, "Forbidden")
        assert_error(client.get("/v1/orders", params={"user": "bob"}), 403, "Forbidden")
        assert_error(client.get("/v1/risk", params={"user": "bob"}), 403, "Forbidden")


def test_live_needs_a_live_token_and_the_environment_opt_in(db_url: str) -> None:
    live = {**MARKET, "testnet": False}
    with running(db_url, allow_live=False) as api:
        with api.client(api.token("alice")) as plain, \
                api.client(api.token("alice", live=True)) as trader:
            no_token = assert_error(plain.post("/v1/orders", json=live), 403,
                                    "LiveTradingNotAllowedError")
            assert no_token["order"] is None and "--live" in no_token["message"]
            assert api.rows() == []
            assert_error(plain.post("/v1/orders/check", json=live), 403,
                         "LiveTradingNotAllowedError")
            no_env = assert_error(trader.post("/v1/orders", json=live), 403,
                                  "LiveTradingNotAllowedError")
            assert no_env["order"]["status"] == "rejected"
            assert "BAGBOT_ALLOW_LIVE" in no_env["message"]
        assert api.exchange.create_calls == 0
    with running(db_url, allow_live=True) as api, api.client(api.token("alice")) as plain, \
                api.client(api.token("alice", live=True)) as trader:
        assert_error(plain.post("/v1/orders", json=live), 403,
                     "LiveTradingNotAllowedError")
        # the scripted exchange declares no endpoints: where it goes counts as testnet
        assert trader.post("/v1/orders", json=live).status_code == 201


def test_rate_limit_per_token_is_429_with_retry_after(db_url: str) -> None:
    with running(db_url, settings=ServiceSettings(rate_limit=1)) as api:
        freeze_rate_limits(api.served)  # else three slow answers would refill the bucket
        alice, bob = api.token("alice"), api.token("bob")
        with api.client(alice) as client, api.client(bob) as other:
            statuses = [client.get("/v1/orders").status_code for _ in range(2)]
            limited = client.get("/v1/orders")
            assert other.get("/v1/orders").status_code == 200  # each token has its bucket
        assert statuses == [200, 200]  # the burst is twice the rate
        assert_error(limited, 429, "TooManyRequests")
        assert int(limited.headers["Retry-After"]) >= 1


# -- bodies -----------------------------------------------------------------------------------


def test_an_oversized_body_is_413_declared_or_chunked(db_url: str) -> None:
    settings = ServiceSettings(rate_limit=0, max_body=1024)
    with running(db_url, settings=settings) as api:
        token = api.token("alice")
        big = json.dumps({**MARKET, "params": {"note": "x" * 2000}}).encode()

        def chunks() -> Iterator[bytes]:
            for start_ in range(0, len(big), 100):
                yield big[start_:start_ + 100]

        with api.client(token) as client:
            declared = client.post("/v1/orders", content=big,
                                   headers={"Content-Type": "application/json"})
            chunked = client.post("/v1/orders", content=chunks(),
                                  headers={"Content-Type": "application/json"})
        assert_error(declared, 413, "PayloadTooLarge")
        assert_error(chunked, 413, "PayloadTooLarge")
        # A chunked body that never ends: the answer comes once the limit is passed, not
        # after the whole body (which never arrives).
        head = (b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\nAuthorization: Bearer " + token.encode()
                + b"\r\n\r\n")
        body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in chunks())
        status, answer = raw_request(api.served.url, head + body)
        assert status == 413 and answer["type"] == "PayloadTooLarge"
        assert api.rows() == []


def raw_request(url: str, data: bytes, pause: float = 0.0) -> tuple[int, dict[str, Any]]:
    """Send ``data`` on a new connection (then wait ``pause`` seconds, sending nothing
    more) and read one answer."""
    import socket
    import time
    from urllib.parse import urlsplit

    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port)) as sock:
        sock.sendall(data)
        time.sleep(pause)
        sock.settimeout(30)
        answer = b""
        while True:
            head, _, body = answer.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if length is not None and len(body) >= length:
                break
            part = sock.recv(4096)
            if not part:
                break
            answer += part
    status = int(head.split(b" ")[1])
    return status, json.loads(body)


def test_a_body_that_arrives_too_slowly_is_408(db_url: str) -> None:
    with running(db_url, settings=ServiceSettings(rate_limit=0, timeout=1)) as api:
        token = api.token("alice")
        head = (b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 200\r\nAuthorization: Bearer " + token.encode()
                + b"\r\n\r\n{")
        status, answer = raw_request(api.served.url, head, pause=1.5)  # the rest never comes
        assert status == 408 and answer["type"] == "RequestTimeout"
        assert api.rows() == []


# -- listing, risk, plugins, admin -------------------------------------------------------------


def test_list_filters_and_pages_newest_first(api: Api) -> None:
    with api.client(api.token("alice")) as client:
        ids = [client.post("/v1/orders", json={**MARKET, "type": "limit",
                                               "price": "40000"}).json()["id"]
               for _ in range(3)]
        client.post(f"/v1/orders/{ids[0]}/cancel")
        page = client.get("/v1/orders", params={"limit": 2}).json()
        rest = client.get("/v1/orders", params={"limit": 2, "offset": 2}).json()
        both = client.get("/v1/orders", params=[("status", "open"), ("status", "canceled")])
        canceled = client.get("/v1/orders", params={"status": "canceled"}).json()
        nothing = client.get("/v1/orders", params={"symbol": "ETH/BTC"}).json()
        bad_status = client.get("/v1/orders", params={"status": "done"})
        bad_limit = client.get("/v1/orders", params={"limit": 1001})
        future = client.get("/v1/orders", params={"since": "2999-01-01T00:00:00"}).json()
    assert [o["id"] for o in page["orders"]] == ids[:0:-1] and page["next_offset"] == 2
    assert [o["id"] for o in rest["orders"]] == [ids[0]] and rest["next_offset"] is None
    assert len(both.json()["orders"]) == 3
    assert [o["id"] for o in canceled["orders"]] == [ids[0]]
    assert nothing["orders"] == [] and future["orders"] == []
    assert_error(bad_status, 422, "ValidationError")
    assert_error(bad_limit, 422, "ValidationError")


def test_list_bounds_past_what_utc_can_hold_are_bounds_not_errors(api: Api) -> None:
    """Valid times that UTC cannot hold (the calendar's first hours in a zone east of UTC,
    its last ones west of it) select every order or none, as written: not a 500."""
    early, late = "0001-01-01T00:00:09+06:00", "9999-12-31T23:00:00-05:00"
    with api.client(api.token("alice")) as client:
        order = client.post("/v1/orders", json=MARKET).json()
        answers = {(name, when): client.get("/v1/orders", params={name: when})
                   for name in ("since", "until") for when in (early, late)}
    assert {key: r.status_code for key, r in answers.items()} == dict.fromkeys(answers, 200)
    assert {key: [o["id"] for o in r.json()["orders"]] for key, r in answers.items()} == {
        ("since", early): [order["id"]], ("until", early): [],
        ("since", late): [], ("until", late): [order["id"]]}


def test_plugins_and_risk_match_the_command_line_shapes(api: Api) -> None:
    with api.client(api.token("alice")) as client, \
            api.client(api.token("root", admin=True)) as admin:
        plugins = client.get("/v1/plugins").json()
        risk = client.get("/v1/risk").json()
        global_risk = admin.get("/v1/risk").json()
        bobs = admin.get("/v1/risk", params={"user": "bob"}).json()
        me = client.get("/v1/me").json()
    assert [p["plugin"] for p in plugins] == ["risk", "paper", "scripted", "flaky"]
    assert plugins == [i.as_dict() for i in api.router.registry.plugin_infos()]
    assert set(risk) == {"user", "limits", "trading_state"} and risk["user"] == "alice"
    assert set(risk["limits"]) == {"config_file", "user", "checks", "off", "skipped"}
    assert risk["trading_state"] == {"state": "active", "source": None, "scopes": []}
    assert global_risk["user"] is None and bobs["user"] == "bob"
    assert (me["user_id"], me["admin"], me["live"]) == ("alice", False, False)


def test_halt_reduce_resume_act_as_the_kill_switch(api: Api) -> None:
    root = api.token("root", admin=True)
    with api.client(api.token("alice")) as client, api.client(root) as admin:
        resting = client.post("/v1/orders", json={**MARKET, "type": "limit",
                                                  "price": "40000"}).json()
        halted = admin.post("/v1/halt", json={"user": "alice", "reason": "drill",
                                              "cancel_open": True})
        assert halted.status_code == 200, halted.text
        change = halted.json()
        assert (change["state"], change["scope"], change["user_id"]) == (
            "halted", "user", "alice")
        assert change["who"] == f"token:{root.split('_')[1]}"
        assert [c["order"]["status"] for c in change["canceled"]] == ["canceled"]
        assert resting["id"] == change["canceled"][0]["order"]["id"]
        refused = assert_error(client.post("/v1/orders", json=MARKET), 422, "RiskCheckError")
        assert refused["details"]["violations"][0]["check"] == "trading_state"
        state = client.get("/v1/risk").json()["trading_state"]
        assert state["state"] == "halted" and state["source"]["reason"] == "drill"
        reduced = admin.post("/v1/reduce", json={"user": "alice", "reason": "wind down"})
        assert reduced.json()["state"] == "reducing"
        resumed = admin.post("/v1/resume", json={"user": "alice", "reason": "done"})
        assert resumed.json()["state"] == "active"
        assert client.post("/v1/orders", json=MARKET).status_code == 201
        assert_error(admin.post("/v1/halt", json={"reason": " "}), 422, "ValidationError")
        assert_error(admin.post("/v1/halt", json={"reason": "x", "connector": "nosuch"}),
                     422, "UnknownConnectorError")
        assert_error(admin.post("/v1/reconcile", json={"connector": "nosuch"}), 422,
                     "UnknownConnectorError")
        assert_error(admin.post("/v1/reconcile", json={"connector": "scripted",
                                                       "grace_seconds": 30}),
                     422, "ValidationError")
    assert "token" not in {o.user_id for o in api.rows()}


def test_decimal_fields_keep_every_digit(api: Api) -> None:
    body = {**MARKET, "type": "limit", "amount": "0.00123", "price": "40000.01"}
    with api.client(api.token("alice")) as client:
        order = client.post("/v1/orders", json=body).json()
    assert (order["qty"], order["price"]) == ("0.00123", "40000.01")
    assert api.row(order["id"]).qty == Decimal("0.00123")
