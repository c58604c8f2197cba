"""Whatever a client sends, the service answers in its own shapes and never with a 5xx:
order bodies, raw bytes, query strings and header values drawn by Hypothesis, over real
HTTP against the real router and a SQLite file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router
from bagbot_core.service.app import create_app
from bagbot_core.service.config import ServiceSettings
from tests.service_helpers import make_token, serve_in_thread

ERROR_KEYS = {"type", "message", "details", "order"}
FUZZ = settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=8)
money = st.one_of(st.from_regex(r"[0-9]{1,6}(\.[0-9]{1,8})?", fullmatch=True), json_values)
orders = st.fixed_dictionaries(
    {},
    optional={"connector": st.sampled_from(["paper", "nosuch", "", "pa per"]) | json_values,
              "symbol": st.sampled_from(["BTC/USDT", "ETH/USDT", "btc/usdt", "NOPE/X"])
              | json_values,
              "side": st.sampled_from(["buy", "sell", "BUY"]) | json_values,
              "type": st.sampled_from(["market", "limit"]) | json_values,
              "amount": money, "price": money, "params": json_values,
              "testnet": st.booleans() | json_values, "extra": json_values})


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz')}/bagbot.db"
    router = Router(PluginRegistry(disabled=(), load_entrypoints=False), limits=RiskLimits(),
                    allow_live=False)
    settings_ = ServiceSettings(rate_limit=0, max_body=4096)
    with serve_in_thread(create_app(settings_, database_url=url, router=router),
                         settings_) as served:
        yield served.url, make_token(url, "fuzzer")


def check(response: httpx.Response) -> dict[str, Any] | list[Any]:
    assert response.status_code < 500, response.text
    body = response.json()
    if response.status_code >= 300 or response.status_code == 202:
        assert set(body) == ERROR_KEYS and isinstance(body["message"], str), body
    return body  # type: ignore[no-any-return]


@FUZZ
@given(body=orders, key=st.none() | st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=70))
def test_any_order_body_gets_an_answer_in_the_api_shapes(service: tuple[str, str],
                                                         body: dict[str, Any],
                                                         key: str | None) -> None:
    url, token = service
    headers = {"Authorization": f"Bearer {token}"}
    if key is not None and key.strip() == key:  # header values cannot start/end in blanks
        headers["Idempotency-Key"] = key
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        response = client.post("/v1/orders", content=json.dumps(body),
                               headers={"Content-Type": "application/json"})
        answer = check(response)
        if response.status_code in (200, 201):
            assert isinstance(answer, dict) and answer["user_id"] == "fuzzer"
        for field in ("amount", "price"):
            if not isinstance(body.get(field, ""), str):
                assert response.status_code == 422  # money is a decimal string
        check(client.post("/v1/orders/check", content=json.dumps(body),
                          headers={"Content-Type": "application/json"}))


@FUZZ
@given(raw=st.binary(max_size=600))
def test_any_bytes_as_a_body_get_an_answer_in_the_error_shape(service: tuple[str, str],
                                                              raw: bytes) -> None:
    url, token = service
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                      timeout=60) as client:
        response = client.post("/v1/orders", content=raw,
                               headers={"Content-Type": "application/json"})
    check(response)


@FUZZ
@given(params=st.lists(st.tuples(
    st.sampled_from(["symbol", "status", "connector", "since", "until", "limit", "offset",
                     "user", "x"]), st.text(max_size=30)), max_size=5),
    path=st.text(max_size=20))
def test_any_query_or_path_gets_an_answer(service: tuple[str, str],
                                          params: list[tuple[str, str]], path: str) -> None:
    url, token = service
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                      timeout=60) as client:
        check(client.get("/v1/orders", params=params))
        check(client.get("/v1/orders/" + quote(path, safe="")))
