"""The fake Binance server in its own process, driven over stdin/stdout.

The benchmark client and the fake exchange must not share one interpreter (one GIL, one
event loop): the server's own work would then be billed to whichever client is measured.
This process serves :class:`bagbot_binance.testing.FakeBinanceServer` on 127.0.0.1 and
answers one-line commands:

``latency <seconds>``   replace the added latency on every request (``0`` removes it)
``counts``              JSON ``{"METHOD /path": n, ...}`` of requests seen since ``reset``
``reset``               clear the request log
``quit``                stop

It prints ``ready <url>`` once serving.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
from decimal import Decimal


def _book():  # type: ignore[no-untyped-def]
    from bagbot_binance.testing import default_book

    book = default_book()
    book.deposit("USDT", Decimal(10) ** 9)  # thousands of market buys per run
    book.deposit("BTC", Decimal(10) ** 4)
    return book


async def _serve() -> None:
    from bagbot_binance.testing import start_fake_binance

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with start_fake_binance(_book()) as server:
        print(f"ready {server.url}", flush=True)
        while True:
            line = (await reader.readline()).decode().strip()
            if not line or line == "quit":
                break
            command, _, arg = line.partition(" ")
            if command == "latency":
                server.clear_faults()
                if float(arg) > 0:
                    server.add_latency(float(arg), times=None)
                print("ok", flush=True)
            elif command == "counts":
                counts = collections.Counter(f"{r.method} {r.path}" for r in server.requests)
                print(json.dumps(dict(counts)), flush=True)
            elif command == "reset":
                server.reset_log()
                print("ok", flush=True)
            else:
                print(f"error unknown command {command!r}", flush=True)


if __name__ == "__main__":
    asyncio.run(_serve())
