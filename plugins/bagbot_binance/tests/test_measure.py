"""Costs against the fake server, printed for the record (``pytest -s``)."""

from __future__ import annotations

import statistics
import time
from decimal import Decimal

from bagbot_binance.testing import FakeBinanceServer, connector_for

from bagbot_core.orders import OrderRequest, OrderType, Side


async def test_measure_load_markets_and_create_order(
    binance_server: FakeBinanceServer,
) -> None:
    import ccxt.async_support  # noqa: F401 - exclude the one-off import from the timings

    conn = connector_for(binance_server)
    try:
        started = time.perf_counter()
        await conn.load_markets()
        first_load = time.perf_counter() - started
        load_requests = len(binance_server.requests)

        reloads = []
        for _ in range(20):
            started = time.perf_counter()
            await conn.load_markets(reload=True)
            reloads.append(time.perf_counter() - started)

        binance_server.reset_log()
        creates = []
        for i in range(20):
            order = OrderRequest("BTC/USDT", Side.BUY, OrderType.MARKET, Decimal("0.001"))
            started = time.perf_counter()
            await conn.create_order(order, f"bb-measure-{i}")
            creates.append(time.perf_counter() - started)
        create_requests = len(binance_server.requests) / 20
    finally:
        await conn.close()

    assert load_requests == 1
    assert create_requests == 1
    print(
        f"\nload_markets: {load_requests} request; first {first_load * 1000:.1f} ms "
        f"(builds the ccxt instance), reload median {statistics.median(reloads) * 1000:.2f} ms"
        f"\ncreate_order: {create_requests:g} request; median "
        f"{statistics.median(creates) * 1000:.2f} ms"
    )
