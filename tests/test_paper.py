"""The built-in ``paper`` exchange, on real SQLite files and the PostgreSQL server.

``db_url`` (tests/conftest.py) runs each test on a fresh SQLite file and, when reachable, on
a throwaway PostgreSQL schema. Every connector here gets its own account, so tests (and
hypothesis examples) never see each other's balances.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from bagbot_core.connector import ConnectorSettings
from bagbot_core.db import get_engine
from bagbot_core.errors import (
    ConfigurationError,
    ExchangeOrderNotFoundError,
    ExchangeRejectedError,
    ExchangeUnavailableError,
)
from bagbot_core.orders import ExchangeOrder, OrderRequest, OrderType, Side
from bagbot_core.paper.connector import PaperBalance, PaperConnector
from bagbot_core.paper.models import PaperOrderRow
from bagbot_core.plugins import PluginRegistry
from bagbot_core.status import OrderStatus

D = Decimal


def make(db_url: str, **config: Any) -> PaperConnector:
    config.setdefault("account", f"acct-{uuid.uuid4().hex[:12]}")
    return PaperConnector(ConnectorSettings(config=config, database_url=db_url))


def market(symbol: str, side: str, amount: str) -> OrderRequest:
    return OrderRequest(symbol, Side(side), OrderType.MARKET, D(amount))


def limit(symbol: str, side: str, amount: str, price: str) -> OrderRequest:
    return OrderRequest(symbol, Side(side), OrderType.LIMIT, D(amount), D(price))


def cid() -> str:
    return f"t-{uuid.uuid4().hex}"


async def totals(paper: PaperConnector) -> dict[str, tuple[Decimal, Decimal]]:
    return {a: (b.free, b.locked) for a, b in (await paper.fetch_balances()).items()}


def order_rows(db_url: str, account: str) -> int:
    with get_engine(db_url).connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(PaperOrderRow)
                .where(PaperOrderRow.account == account)
            ).scalar_one()
        )


# ---------------------------------------------------------------------------
# Markets, quotes, config
# ---------------------------------------------------------------------------


async def test_markets_and_quotes(sqlite_url: str) -> None:
    paper = make(sqlite_url)
    markets = await paper.load_markets()
    assert set(markets) == {"BTC/USDT", "ETH/USDT", "SOL/USDT", "BTC/USD", "ETH/BTC", "LUNA/USDT"}
    assert not markets["LUNA/USDT"].active
    assert all(m.active for s, m in markets.items() if s != "LUNA/USDT")
    btc = markets["BTC/USDT"]
    assert (btc.base, btc.quote, btc.amount_step, btc.price_step) == (
        "BTC",
        "USDT",
        D("0.00001"),
        D("0.01"),
    )
    quote = await paper.fetch_quote("BTC/USDT")
    assert (quote.bid, quote.ask) == (D("49995"), D("50005"))
    eth_btc = await paper.fetch_quote("ETH/BTC")
    assert (eth_btc.bid, eth_btc.ask) == (D("0.059994"), D("0.060006"))
    assert paper.name == "paper"
    caps = paper.capabilities
    assert all(
        (
            caps.market_orders,
            caps.limit_orders,
            caps.cancel,
            caps.fetch_by_client_order_id,
            caps.fills_in_create_response,
        )
    )


async def test_config_prices_markets_spread(sqlite_url: str) -> None:
    paper = make(sqlite_url, prices={"BTC/USDT": "51000"}, spread="0")
    quote = await paper.fetch_quote("BTC/USDT")
    assert (quote.bid, quote.ask) == (D(51000), D(51000))

    custom = make(
        sqlite_url,
        markets=[
            {
                "symbol": "DOGE/USDT",
                "price": "0.1",
                "amount_step": "1",
                "price_step": "0.00001",
                "min_amount": "10",
            }
        ],
        balances={"USDT": "100", "DOGE": "0"},
    )
    assert list(await custom.load_markets()) == ["DOGE/USDT"]
    filled = await custom.create_order(market("DOGE/USDT", "buy", "100"), cid())
    assert (filled.status, filled.avg_price) == (OrderStatus.FILLED, D("0.10001"))
    assert await totals(custom) == {"USDT": (D("89.999"), D(0)), "DOGE": (D(100), D(0))}


@pytest.mark.parametrize(
    "config",
    [
        {"api_key": "x"},
        {"prices": {"XRP/USDT": "1"}},
        {"prices": {"BTC/USDT": "-1"}},
        {"balances": {"USDT": "lots"}},
        {"markets": [{"symbol": "BTCUSDT", "price": "1"}]},
        {"markets": [{"symbol": "A/B"}]},
        {"spread": "1"},
        {"account": ""},
    ],
)
def test_bad_config_is_a_configuration_error(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="paper connector config"):
        PaperConnector(ConnectorSettings(config=config, database_url="sqlite://"))


# ---------------------------------------------------------------------------
# Fills and balances
# ---------------------------------------------------------------------------


async def test_market_buy_and_sell_fill_at_the_touch(db_url: str) -> None:
    paper = make(db_url)
    buy = await paper.create_order(market("BTC/USDT", "buy", "0.1"), cid())
    assert buy.status is OrderStatus.FILLED
    assert (buy.filled_qty, buy.avg_price, buy.amount) == (D("0.1"), D(50005), D("0.1"))
    balances = await totals(paper)
    assert balances["USDT"] == (D("94999.5"), D(0))
    assert balances["BTC"] == (D("10.1"), D(0))

    sell = await paper.create_order(market("BTC/USDT", "sell", "0.25"), cid())
    assert (sell.status, sell.filled_qty, sell.avg_price) == (
        OrderStatus.FILLED,
        D("0.25"),
        D(49995),
    )
    balances = await totals(paper)
    assert balances["USDT"] == (D("94999.5") + D("12498.75"), D(0))
    assert balances["BTC"] == (D("9.85"), D(0))
    # Tiny amounts stay exact on every backend (no float, no rounding).
    tiny = await paper.create_order(market("ETH/BTC", "buy", "0.0023"), cid())
    assert tiny.avg_price == D("0.060006")
    balances = await totals(paper)
    assert balances["BTC"] == (D("9.85") - D("0.0001380138"), D(0))
    assert balances["ETH"] == (D("100.0023"), D(0))


async def test_limit_rests_and_cancel_releases_funds(db_url: str) -> None:
    paper = make(db_url)
    before = await totals(paper)
    buy_id, sell_id = cid(), cid()
    buy = await paper.create_order(limit("BTC/USDT", "buy", "0.5", "49000"), buy_id)
    sell = await paper.create_order(limit("ETH/USDT", "sell", "2", "3100"), sell_id)
    assert buy.status is sell.status is OrderStatus.OPEN
    assert (buy.filled_qty, buy.avg_price) == (D(0), None)
    during = await totals(paper)
    assert during["USDT"] == (D(100000) - D(24500), D(24500))
    assert during["ETH"] == (D(98), D(2))
    assert [o.client_order_id for o in await paper.fetch_open_orders()] == [buy_id, sell_id]

    canceled = await paper.cancel_order(
        "BTC/USDT", external_id=buy.external_id, client_order_id=buy_id
    )
    assert canceled.status is OrderStatus.CANCELED
    assert canceled.filled_qty == 0
    await paper.cancel_order("ETH/USDT", external_id=None, client_order_id=sell_id)
    assert await totals(paper) == before
    assert await paper.fetch_open_orders() == []

    with pytest.raises(ExchangeRejectedError, match="already canceled"):
        await paper.cancel_order("BTC/USDT", external_id=None, client_order_id=buy_id)


async def test_crossing_limit_fills_at_the_better_of_limit_and_touch(db_url: str) -> None:
    paper = make(db_url)
    buy = await paper.create_order(limit("BTC/USDT", "buy", "0.1", "51000"), cid())
    assert (buy.status, buy.avg_price, buy.price) == (OrderStatus.FILLED, D(50005), D(51000))
    at_touch = await paper.create_order(limit("BTC/USDT", "buy", "0.1", "50005"), cid())
    assert (at_touch.status, at_touch.avg_price) == (OrderStatus.FILLED, D(50005))
    sell = await paper.create_order(limit("BTC/USDT", "sell", "0.1", "40000"), cid())
    assert (sell.status, sell.avg_price) == (OrderStatus.FILLED, D(49995))
    balances = await totals(paper)
    assert balances["USDT"] == (D(100000) - 2 * D("5000.5") + D("4999.5"), D(0))
    assert balances["BTC"] == (D("10.1"), D(0))


async def test_cancel_of_a_filled_order_is_refused(db_url: str) -> None:
    paper = make(db_url)
    filled = await paper.create_order(market("SOL/USDT", "buy", "1"), cid())
    with pytest.raises(ExchangeRejectedError, match="already filled; only open orders"):
        await paper.cancel_order(
            "SOL/USDT", external_id=filled.external_id, client_order_id=filled.client_order_id or ""
        )


async def test_set_price_fills_the_resting_orders_it_crosses(db_url: str) -> None:
    paper = make(db_url)
    buy = await paper.create_order(limit("BTC/USDT", "buy", "0.2", "49000"), cid())
    sell = await paper.create_order(limit("BTC/USDT", "sell", "0.3", "52000"), cid())
    other = await paper.create_order(limit("ETH/USDT", "buy", "1", "2000"), cid())

    # ask = 49004.9 at 49000 * 1.0001: not yet through the buy at 49000.
    assert await paper.set_price("BTC/USDT", "49000") == []
    filled = await paper.set_price("BTC/USDT", "48990")  # ask 48994.9 <= 49000
    assert [o.external_id for o in filled] == [buy.external_id]
    assert (filled[0].status, filled[0].avg_price, filled[0].filled_qty) == (
        OrderStatus.FILLED,
        D(49000),
        D("0.2"),
    )
    filled = await paper.set_price("BTC/USDT", "60000")
    assert [(o.external_id, o.avg_price) for o in filled] == [(sell.external_id, D(52000))]
    assert paper.reference_price("BTC/USDT") == D(60000)

    balances = await totals(paper)
    assert balances["BTC"] == (D("9.9"), D(0))
    assert balances["USDT"] == (D(100000) - D(9800) + D(15600) - D(2000), D(2000))
    still = await paper.fetch_order(
        "ETH/USDT", external_id=other.external_id, client_order_id=other.client_order_id or ""
    )
    assert still.status is OrderStatus.OPEN
    with pytest.raises(ExchangeRejectedError, match="unknown symbol"):
        await paper.set_price("XRP/USDT", "1")


async def test_another_instance_with_moved_prices_fills_resting_orders(db_url: str) -> None:
    first = make(db_url)
    rest = await first.create_order(limit("ETH/USDT", "buy", "1", "2900"), cid())
    later = make(db_url, account=first.account, prices={"ETH/USDT": "2800"})
    seen = await later.fetch_order(
        "ETH/USDT", external_id=rest.external_id, client_order_id=rest.client_order_id or ""
    )
    assert (seen.status, seen.avg_price) == (OrderStatus.FILLED, D(2900))
    assert (await totals(first))["ETH"] == (D(101), D(0))


# ---------------------------------------------------------------------------
# Rejections
# ---------------------------------------------------------------------------


async def test_insufficient_funds_writes_nothing(db_url: str) -> None:
    paper = make(db_url, balances={"USDT": "1000", "BTC": "0.01"})
    before = await totals(paper)
    cases = [
        market("BTC/USDT", "buy", "0.02"),  # 1000.1 USDT at the ask
        limit("BTC/USDT", "buy", "0.1", "10010"),  # 1001 USDT reserved
        # Crosses and would cost 1000.1 at the touch, but reserves the limit value first.
        limit("BTC/USDT", "buy", "0.02", "60000"),
        market("BTC/USDT", "sell", "0.01001"),
        limit("BTC/USDT", "sell", "0.02", "90000"),
        market("ETH/USDT", "sell", "0.01"),  # no ETH at all
    ]
    for request in cases:
        with pytest.raises(ExchangeRejectedError, match="insufficient balance"):
            await paper.create_order(request, cid())
    assert order_rows(db_url, paper.account) == 0
    assert await totals(paper) == before
    # The exact amount that fits is accepted: 0.01999 * 50005 = 999.59995.
    ok = await paper.create_order(market("BTC/USDT", "buy", "0.01999"), cid())
    assert ok.status is OrderStatus.FILLED
    assert (await totals(paper))["USDT"] == (D("0.40005"), D(0))


async def test_unknown_and_inactive_symbols_are_rejected(db_url: str) -> None:
    paper = make(db_url)
    with pytest.raises(ExchangeRejectedError, match="unknown symbol 'XRP/USDT'"):
        await paper.create_order(market("XRP/USDT", "buy", "1"), cid())
    with pytest.raises(ExchangeRejectedError, match="unknown symbol"):
        await paper.fetch_quote("XRP/USDT")
    with pytest.raises(ExchangeRejectedError, match="LUNA/USDT is not active"):
        await paper.create_order(market("LUNA/USDT", "buy", "100"), cid())
    quote = await paper.fetch_quote("LUNA/USDT")  # listed, only trading is halted
    assert quote.bid is not None
    assert order_rows(db_url, paper.account) == 0


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (market("BTC/USDT", "buy", "0.000015"), "not a multiple of BTC/USDT's step"),
        (limit("BTC/USDT", "buy", "0.1", "49000.005"), "not a multiple of BTC/USDT's tick"),
        (market("SOL/USDT", "buy", "0.005"), "below SOL/USDT's minimum 0.01"),
        (limit("BTC/USDT", "buy", "0.00001", "40000"), "order value 0.4 is below"),
        (OrderRequest("BTC/USDT", Side.BUY, OrderType.LIMIT, D("0.1")), "needs a positive"),
    ],
)
async def test_exchange_side_order_checks(
    sqlite_url: str, request_: OrderRequest, message: str
) -> None:
    paper = make(sqlite_url)
    with pytest.raises(ExchangeRejectedError, match=message):
        await paper.create_order(request_, cid())
    assert order_rows(sqlite_url, paper.account) == 0


async def test_prepare_order_uses_the_paper_steps(sqlite_url: str) -> None:
    paper = make(sqlite_url)
    markets = await paper.load_markets()
    prepared = paper.prepare_order(
        limit("BTC/USDT", "buy", "0.123456", "49000.129"), markets["BTC/USDT"]
    )
    assert (prepared.amount, prepared.price) == (D("0.12345"), D("49000.12"))
    placed = await paper.create_order(prepared, cid())
    assert placed.status is OrderStatus.OPEN


# ---------------------------------------------------------------------------
# Lookups and idempotency
# ---------------------------------------------------------------------------


async def test_fetch_by_external_or_client_order_id(db_url: str) -> None:
    paper = make(db_url)
    coid = cid()
    placed = await paper.create_order(limit("ETH/USDT", "sell", "1", "3500"), coid)
    by_id = await paper.fetch_order(
        "ETH/USDT", external_id=placed.external_id, client_order_id="ignored"
    )
    by_coid = await paper.fetch_order("ETH/USDT", external_id=None, client_order_id=coid)
    assert by_id == by_coid == placed
    with pytest.raises(ExchangeOrderNotFoundError, match="client order id 'nope'"):
        await paper.fetch_order("ETH/USDT", external_id=None, client_order_id="nope")
    with pytest.raises(ExchangeOrderNotFoundError, match="id 'paper-missing'"):
        await paper.fetch_order("ETH/USDT", external_id="paper-missing", client_order_id=coid)
    with pytest.raises(ExchangeOrderNotFoundError):  # right id, wrong symbol
        await paper.fetch_order("BTC/USDT", external_id=placed.external_id, client_order_id=coid)
    with pytest.raises(ExchangeOrderNotFoundError):
        await paper.cancel_order("ETH/USDT", external_id=None, client_order_id="nope")
    # Another account does not see it.
    stranger = make(db_url)
    with pytest.raises(ExchangeOrderNotFoundError):
        await stranger.fetch_order("ETH/USDT", external_id=None, client_order_id=coid)


async def test_duplicate_client_order_id_returns_the_existing_order(db_url: str) -> None:
    paper = make(db_url)
    coid = cid()
    first = await paper.create_order(market("BTC/USDT", "buy", "0.1"), coid)
    after_first = await totals(paper)
    again = await paper.create_order(market("BTC/USDT", "buy", "0.1"), coid)
    assert again == first
    assert await totals(paper) == after_first
    assert order_rows(db_url, paper.account) == 1

    resting = await paper.create_order(limit("BTC/USDT", "sell", "1", "55000"), "rest-1")
    assert await paper.create_order(limit("BTC/USDT", "sell", "1", "55000"), "rest-1") == resting
    with pytest.raises(ExchangeRejectedError, match="already used by paper order"):
        await paper.create_order(market("BTC/USDT", "buy", "0.2"), coid)
    # The same client order id in another account is a different order.
    other = make(db_url)
    assert (await other.create_order(market("BTC/USDT", "buy", "0.1"), coid)).external_id != (
        first.external_id
    )


async def test_losing_a_client_order_id_race_returns_the_winner(db_url: str) -> None:
    """Creates with one client order id racing from several connectors (threads): one
    order is placed and charged once; every caller gets that order back."""
    account = f"acct-{uuid.uuid4().hex[:12]}"
    papers = [make(db_url, account=account) for _ in range(4)]
    before = await totals(papers[0])
    coid = cid()
    answers = await asyncio.gather(*(
        p.create_order(limit("BTC/USDT", "buy", "0.1", "45000"), coid) for p in papers))
    assert all(answer == answers[0] for answer in answers)
    assert order_rows(db_url, account) == 1
    after = await totals(papers[0])
    assert after["USDT"] == (before["USDT"][0] - D(4500), before["USDT"][1] + D(4500))


async def test_a_failure_mid_transaction_leaves_no_partial_state(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    paper = make(db_url)
    before = await totals(paper)

    def broken_view(row: PaperOrderRow) -> ExchangeOrder:
        raise RuntimeError("crash after the balances and the order row were flushed")

    monkeypatch.setattr(PaperConnector, "_view", staticmethod(broken_view))
    with pytest.raises(RuntimeError, match="crash after"):
        await paper.create_order(market("BTC/USDT", "buy", "1"), cid())
    monkeypatch.undo()
    assert order_rows(db_url, paper.account) == 0
    assert await totals(paper) == before


async def test_an_unreachable_database_is_unavailable_not_rejected() -> None:
    paper = make("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(ExchangeUnavailableError, match="paper exchange database error"):
        await paper.create_order(market("BTC/USDT", "buy", "0.1"), cid())


async def test_state_survives_a_new_connector_instance(db_url: str) -> None:
    first = make(db_url)
    placed = await first.create_order(limit("SOL/USDT", "buy", "10", "100"), "keep-me")
    await first.create_order(market("SOL/USDT", "sell", "5"), cid())
    balances = await totals(first)

    again = make(db_url, account=first.account)  # what a new CLI process builds
    assert await totals(again) == balances
    found = await again.fetch_order("SOL/USDT", external_id=None, client_order_id="keep-me")
    assert found == placed
    await again.cancel_order("SOL/USDT", external_id=placed.external_id, client_order_id="keep-me")
    assert (await totals(first))["USDT"] == (D(100000) + D("749.925"), D(0))


# ---------------------------------------------------------------------------
# Separate processes
# ---------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    from decimal import Decimal
    from bagbot_core.connector import ConnectorSettings
    from bagbot_core.errors import ExchangeRejectedError
    from bagbot_core.orders import OrderRequest, OrderType, Side
    from bagbot_core.plugins import PluginRegistry

    url, config, go, tag, count, amount = sys.argv[1:7]
    spec = PluginRegistry(disabled=(), load_entrypoints=False).connector_spec("paper")
    paper = spec.factory(ConnectorSettings(database_url=url, config=json.loads(config)))
    if go != "-":
        open(f"{go}.{tag}", "w").close()  # ready
        while not os.path.exists(go):
            time.sleep(0.005)

    async def main():
        filled, rejected = [], []
        for i in range(int(count)):
            order = OrderRequest("ETH/USDT", Side.BUY, OrderType.MARKET, Decimal(amount))
            try:
                placed = await paper.create_order(order, f"{tag}-{i}")
                filled.append(placed.external_id)
            except ExchangeRejectedError as exc:
                rejected.append(str(exc))
        resting = await paper.create_order(
            OrderRequest("ETH/USDT", Side.SELL, OrderType.LIMIT, Decimal("0.01"),
                         Decimal("9000")), f"{tag}-rest")
        return filled, rejected, resting.external_id

    filled, rejected, resting = asyncio.run(main())
    print(json.dumps({"filled": filled, "rejected": rejected, "resting": resting,
                      "ccxt": "ccxt" in sys.modules}))
    """
)


def _child(
    url: str, config: dict[str, Any], go: str, tag: str, count: int, amount: str
) -> list[str]:
    return [sys.executable, "-c", _CHILD, url, json.dumps(config), go, tag, str(count), amount]


def test_new_process_sees_the_book_and_never_imports_ccxt(sqlite_url: str) -> None:
    account = f"acct-{uuid.uuid4().hex[:12]}"
    get_engine(sqlite_url)
    done = subprocess.run(
        _child(sqlite_url, {"account": account}, "-", "cli", 2, "0.5"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["ccxt"] is False
    assert len(answer["filled"]) == 2

    paper = make(sqlite_url, account=account)
    resting = asyncio.run(
        paper.fetch_order("ETH/USDT", external_id=None, client_order_id="cli-rest")
    )
    assert (resting.external_id, resting.status) == (answer["resting"], OrderStatus.OPEN)
    assert asyncio.run(totals(paper))["ETH"] == (D("100.99"), D("0.01"))


@pytest.mark.slow
def test_two_processes_cannot_double_spend(db_url: str, tmp_path: Path) -> None:
    account = f"acct-{uuid.uuid4().hex[:12]}"
    config = {"account": account, "balances": {"USDT": "1000", "ETH": "1"}}
    get_engine(db_url)  # tables exist before the children race
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            _child(db_url, config, str(go), tag, 30, "0.01"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"go.{tag}").exists() for tag in ("a", "b")):
        assert time.monotonic() < deadline, "children did not start"
        time.sleep(0.01)
    go.touch()  # both are waiting at the line: start together
    answers = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        answers.append(json.loads(out))
    # 0.01 ETH at the ask 3000.3 costs 30.003: 1000 USDT pay for exactly 33 of the 60.
    filled = sum(len(a["filled"]) for a in answers)
    assert filled == 33
    assert all("insufficient balance" in r for a in answers for r in a["rejected"])
    paper = make(db_url, account=account)
    balances = asyncio.run(totals(paper))
    assert balances["USDT"] == (D(1000) - 33 * D("30.003"), D(0))
    assert balances["ETH"] == (D(1) + 33 * D("0.01") - D("0.02"), D("0.02"))
    assert order_rows(db_url, account) == 35


# ---------------------------------------------------------------------------
# Conservation: fills move value between assets, never create it
# ---------------------------------------------------------------------------

_PROPERTY_MARKETS = {
    # symbol: (amount unit, price step)
    "BTC/USDT": (D("0.001"), D("0.01")),
    "ETH/USDT": (D("0.01"), D("0.01")),
    "ETH/BTC": (D("0.01"), D("0.000001")),
}
_symbols = st.sampled_from(sorted(_PROPERTY_MARKETS))
_sides = st.sampled_from(["buy", "sell"])
_market_op = st.tuples(st.just("market"), _symbols, _sides, st.integers(1, 80))
_limit_op = st.tuples(st.just("limit"), _symbols, _sides, st.integers(1, 80), st.integers(90, 110))
_price_op = st.tuples(st.just("price"), _symbols, st.integers(90, 110))
_cancel_op = st.tuples(st.just("cancel"), st.integers(0, 50))
# Move the price through one of the placed limit orders (fills it if it still rests).
_cross_op = st.tuples(st.just("cross"), st.integers(0, 50))
# "cross" makes sure resting orders get filled by price moves, not only canceled.
_ops = st.one_of(_market_op, _limit_op, _price_op, _cancel_op, _cross_op)


def _scaled(paper: PaperConnector, symbol: str, percent: int) -> Decimal:
    """``percent`` of the current reference price, on the price step."""
    step = _PROPERTY_MARKETS[symbol][1]
    return (paper.reference_price(symbol) * percent / 100).quantize(step)


async def _run_ops(paper: PaperConnector, ops: list[tuple[Any, ...]]) -> list[OrderRequest]:
    """Apply ``ops``; return the accepted requests (client order id set)."""
    placed: list[OrderRequest] = []
    refusals: list[str] = []
    for op in ops:
        try:
            if op[0] == "price":
                await paper.set_price(op[1], _scaled(paper, op[1], op[2]))
            elif op[0] == "cross":
                limits = [r for r in placed if r.price is not None]
                if limits:
                    target = limits[op[1] % len(limits)]
                    assert target.price is not None
                    through = D("0.99") if target.side is Side.BUY else D("1.01")
                    await paper.set_price(target.symbol, target.price * through)
            elif op[0] == "cancel":
                if placed:
                    target = placed[op[1] % len(placed)]
                    await paper.cancel_order(
                        target.symbol,
                        external_id=None,
                        client_order_id=target.client_order_id or "",
                    )
            else:
                symbol, side, units = op[1:4]
                price = _scaled(paper, symbol, op[4]) if op[0] == "limit" else None
                request = OrderRequest(
                    symbol,
                    Side(side),
                    OrderType(op[0]),
                    _PROPERTY_MARKETS[symbol][0] * units,
                    price,
                    client_order_id=cid(),
                )
                await paper.create_order(request, request.client_order_id or "")
                placed.append(request)
        except ExchangeRejectedError as exc:
            refusals.append(str(exc))
    # The only refusals a valid sequence can meet: funds, and canceling a closed order.
    assert all("insufficient balance" in r or "only open orders" in r for r in refusals)
    return placed


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(_ops, min_size=6, max_size=30))
def test_fills_conserve_value(db_url: str, ops: list[tuple[Any, ...]]) -> None:
    """Per asset: final total == start + what the fills moved; locked == open reservations."""
    starting = {"USDT": D(20000), "BTC": D("0.5"), "ETH": D(5)}
    paper = make(db_url, balances={k: str(v) for k, v in starting.items()})

    async def scenario() -> tuple[
        dict[str, PaperBalance], list[tuple[OrderRequest, ExchangeOrder]]
    ]:
        placed = await _run_ops(paper, ops)
        answers = [
            (
                r,
                await paper.fetch_order(
                    r.symbol, external_id=None, client_order_id=r.client_order_id or ""
                ),
            )
            for r in placed
        ]
        return await paper.fetch_balances(), answers

    balances, answers = asyncio.run(scenario())
    statuses = {order.status for _, order in answers}
    event(f"statuses: {sorted(statuses)}")
    maker_fills = any(
        o.status is OrderStatus.FILLED and r.price is not None and o.avg_price == r.price
        for r, o in answers
    )
    event(f"maker fill at the limit: {maker_fills}")
    expected: dict[str, Decimal] = defaultdict(Decimal, starting)
    locked: dict[str, Decimal] = defaultdict(Decimal)
    for request, order in answers:
        buy = request.side is Side.BUY
        assert order.amount == request.amount
        if order.status is OrderStatus.FILLED:
            assert order.filled_qty == request.amount
            assert order.avg_price is not None
            if request.price is not None:  # never a worse price than the limit
                assert order.avg_price <= request.price if buy else order.avg_price >= request.price
            sign = 1 if buy else -1
            expected[request.base] += sign * order.filled_qty
            expected[request.quote] -= sign * order.filled_qty * order.avg_price
        else:
            assert order.status in (OrderStatus.OPEN, OrderStatus.CANCELED)
            assert order.filled_qty == 0
            if order.status is OrderStatus.OPEN:
                assert request.price is not None
                if buy:
                    locked[request.quote] += request.amount * request.price
                else:
                    locked[request.base] += request.amount
    assert set(expected) <= set(balances)
    for asset, balance in balances.items():
        assert balance.free >= 0, asset
        assert balance.locked == locked[asset], asset
        assert balance.total == expected[asset], asset


# ---------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------


def test_paper_is_a_builtin_connector(sqlite_url: str) -> None:
    registry = PluginRegistry(disabled=(), load_entrypoints=False)
    spec = registry.connector_spec("paper")
    assert spec.name == "paper"
    assert spec.description
    connector = spec.factory(ConnectorSettings(database_url=sqlite_url))
    assert isinstance(connector, PaperConnector)
    assert connector.account == "default"
