"""Worker processes for the multi-process tests: ``python -m tests.workers ...``.

Each worker routes orders through a real router into the given database and prints one JSON
line with what it saw, so the parent can add up the processes' views.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter

from bagbot_core.db import get_engine, session_factory
from bagbot_core.errors import BagbotError, RiskCheckError
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router
from tests.scripted import ScriptedExchange, scripted_plugin


async def main(args: argparse.Namespace) -> dict[str, object]:
    exchange = ScriptedExchange()
    # --entrypoints: installed plugins too (a third-party risk plugin under test).
    registry = PluginRegistry(disabled=(), load_entrypoints=args.entrypoints,
                              plugins=[("scripted", scripted_plugin(exchange))])
    config = {}
    if args.connector == "paper":  # one shared paper account, its USDT as given
        config = {"paper": {"account": args.account, "balances": {"USDT": args.usdt}}}
    router = Router(registry, limits=RiskLimits(), connector_config=config)
    factory = session_factory(get_engine(args.url))
    errors: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    # Start together: the point is contention.
    await asyncio.sleep(max(0.0, args.start_at - time.time()))
    started = time.perf_counter()
    with factory() as db:
        for i in range(args.n):
            payload = {"symbol": "BTC/USDT", "side": "buy", "type": "market",
                       "amount": args.amount}
            if args.price:  # a limit order: the scripted exchange leaves it resting, open
                payload.update(type="limit", price=args.price)
            if args.keys:
                payload["client_order_id"] = f"{args.keys}-{i}"
            try:
                order = await router.route_order(args.connector, payload, db, args.user)
                statuses[order.status] += 1
            except RiskCheckError as exc:
                errors[type(exc).__name__] += 1
                refused.update(v.check for v in exc.violations)
            except BagbotError as exc:
                errors[type(exc).__name__] += 1
            except Exception as exc:  # anything outside the hierarchy is a finding
                errors[f"UNEXPECTED {type(exc).__name__}: {exc}"] += 1
    elapsed = time.perf_counter() - started
    await router.aclose()
    return {"statuses": statuses, "errors": errors, "refused": refused,
            "create_calls": exchange.create_calls, "elapsed": elapsed,
            "finished_at": time.time()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--n", type=int, default=250)
    parser.add_argument("--user", default="worker")
    parser.add_argument("--keys", default="", help="client order id prefix (idempotency races)")
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--amount", default="0.01", help="BTC per market buy")
    parser.add_argument("--price", default="", help="limit buys at this price (they rest)")
    parser.add_argument("--entrypoints", action="store_true", help="load installed plugins")
    parser.add_argument("--connector", default="scripted", help="scripted or paper")
    parser.add_argument("--account", default="workers", help="the paper account")
    parser.add_argument("--usdt", default="100000", help="the paper account's starting USDT")
    result = asyncio.run(main(parser.parse_args()))
    json.dump(result, sys.stdout)
