"""Costs against the fake server, printed for the record (``pytest -s``)."""

from __future__ import annotations

import statistics
import time
from decimal import Decimal

from bagbot_coinbase.testing import FakeCoinbaseServer, connector_for

from bagbot_core.orders import OrderRequest, OrderType, Side


async def test_measure_load_markets_and_one_routed_order(
    coinbase_server: FakeCoinbaseServer,
) -> None:
    import ccxt.async_support  # noqa: F401 - exclude the one-off import from the timings

    conn = connector_for(coinbase_server)
    try:
        started = time.perf_counter()
        await conn.load_markets()
        first_load = time.perf_counter() - started
        load_requests = len(coinbase_server.requests)
        reloads = []
        for _ in range(20):
            started = time.perf_counter()
            await conn.load_markets(reload=True)
            reloads.append(time.perf_counter() - started)
        await conn.fetch_quote("BTC/USD")
        coinbase_server.reset_log()
        creates = []
        for i in range(20):
            order = OrderRequest("BTC/USD", Side.BUY, OrderType.MARKET, Decimal("0.001"))
            started = time.perf_counter()
            await conn.create_order(order, f"bb-measure-{i}")
            creates.append(time.perf_counter() - started)
        create_requests = len(coinbase_server.requests) / 20
    finally:
        await conn.close()

    assert load_requests == 1
    assert create_requests == 2  # POST /orders + GET /orders/historical/{id}
    print(
        f"\nload_markets: {load_requests} request; first {first_load * 1000:.1f} ms "
        f"(builds the ccxt instance), reload median {statistics.median(reloads) * 1000:.2f} ms"
        f"\ncreate_order: {create_requests:g} requests (create + read); median "
        f"{statistics.median(creates) * 1000:.2f} ms"
    )


async def test_measure_one_routed_order(
    coinbase_server: FakeCoinbaseServer, tmp_path: object
) -> None:
    """One ``route_order`` (market buy) through the real Router into SQLite, cold and warm."""
    from pathlib import Path

    from bagbot_core.db import dispose_engines, get_engine, session_factory
    from bagbot_core.plugins import PluginRegistry
    from bagbot_core.risk import RiskLimits
    from bagbot_core.router import Router

    assert isinstance(tmp_path, Path)
    router = Router(PluginRegistry(), limits=RiskLimits(), allow_live=False, connector_config={
        "coinbase": {"api_key": coinbase_server.api_key,
                     "api_secret": coinbase_server.api_secret,
                     "api_url": coinbase_server.url, "enable_rate_limit": False}})
    session = session_factory(get_engine(f"sqlite:///{tmp_path / 'm.db'}"))()
    payload = {"symbol": "BTC/USD", "side": "buy", "type": "market", "amount": "0.001"}
    try:
        started = time.perf_counter()
        await router.route_order("coinbase", payload, session, "measure")
        cold = time.perf_counter() - started
        cold_requests = [(r.method, r.path) for r in coinbase_server.requests]
        coinbase_server.reset_log()
        warm = []
        for _ in range(10):
            started = time.perf_counter()
            await router.route_order("coinbase", payload, session, "measure")
            warm.append(time.perf_counter() - started)
        warm_requests = len(coinbase_server.requests) / 10
    finally:
        await router.aclose()
        session.close()
        dispose_engines()
    assert len(cold_requests) == 4  # products, ticker, POST /orders, GET the order
    print(f"\nroute_order (market buy): cold {cold * 1000:.1f} ms, {len(cold_requests)} "
          f"requests; warm median {statistics.median(warm) * 1000:.2f} ms, "
          f"{warm_requests:g} requests (quote cached for 2 s)")
