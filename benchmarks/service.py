"""The HTTP service scenarios: orders through ``bagbot serve`` against ``route_order`` in
process, at the same concurrency.

* ``svc_paper``: 50 concurrent HTTP clients (one ``httpx.AsyncClient`` and one API token
  each, all in this process) send paper orders to ``bagbot serve --workers 1`` on SQLite;
  the baseline is 50 coroutines calling ``Router.route_order("paper", ...)`` in this process,
  an ``AsyncSession`` per order (what the service does per request). Target: at least 0.7x
  the in-process throughput.
* ``svc_binance``: the same, routing to the fake Binance server (its own process, adding
  ``conc_latency`` to every request, as ``conc`` does). Target 0.7x.
* ``pg_svc_paper``: ``svc_paper`` on PostgreSQL with ``bagbot serve --workers 2``. A figure;
  same target.

Both sides are closed loops: each of the 50 clients (coroutines) sends its next order when
its previous one is answered, each with a user of its own (``bench0`` ... ``bench49``), so
the per-user lock is not what is measured. Latency is measured where the caller sees it: the
HTTP round trip on one side, the ``route_order`` call on the other. The service process
writes its audit log to a file, as the in-process side does; its per-token rate limit is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

#: key: (title, metric, target, sides) -- merged into ``harness.SCENARIOS``.
SCENARIOS: dict[str, tuple[str, str, float | None, tuple[str, str]]] = {
    "svc_paper": ("9. HTTP service (1 worker, SQLite), paper, vs in process", "throughput",
                  0.7, ("in-process", "service")),
    "svc_binance": ("9. HTTP service (1 worker, SQLite), fake Binance 20 ms, vs in process",
                    "throughput", 0.7, ("in-process", "service")),
    "pg_svc_paper": ("9. HTTP service (2 workers, PostgreSQL), paper, vs in process",
                     "throughput", 0.7, ("in-process", "service")),
}
#: Seconds ``bagbot serve`` may take to become ready.
START_TIMEOUT = 60.0
#: Variables of the caller's environment the service process must not inherit.
_NOT_INHERITED = ("MAX_ORDER_QTY", "MAX_ORDER_VALUE_USD", "MIN_ORDER_QTY",
                  "PROMETHEUS_MULTIPROC_DIR")


def _users(clients: int) -> list[str]:
    return [f"bench{n}" for n in range(clients)]


async def _closed_loop(total: int, clients: int,
                       one: Callable[[int, int], Awaitable[Any]]) -> Any:
    """``clients`` callers, each sending its next order when the last one is answered;
    ``one(client, i)`` sends order ``i``. Returns a harness ``Sample``."""
    from benchmarks.harness import Sample

    latencies: list[float] = []
    counter = iter(range(total))

    async def client(c: int) -> None:
        for i in counter:
            t0 = time.perf_counter()
            await one(c, i)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return Sample(latencies, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------
# In process
# ---------------------------------------------------------------------------------------


async def in_process(cfg: Any, url: str, connector: str, server: Any = None) -> Any:
    """``route_order`` from ``conc_inflight`` coroutines, an ``AsyncSession`` per order."""
    from bagbot_core.router import Router
    from benchmarks.harness import PAYLOAD, _async_sessions, _registry, bagbot_router

    router = bagbot_router(server.url) if server is not None else Router(
        _registry(binance=False))
    engine, sessions = _async_sessions(url)
    users = _users(cfg.conc_inflight)
    try:
        async def one(client: int, _: int) -> None:
            async with sessions() as session:
                await router.route_order(connector, PAYLOAD, session, users[client])

        await _closed_loop(cfg.conc_inflight, cfg.conc_inflight, one)  # warm-up
        if server is not None:
            server.reset()
        sample = await _closed_loop(cfg.n, cfg.conc_inflight, one)
        if server is not None:
            sample.requests = server.counts()
        return sample
    finally:
        await router.aclose()
        await engine.dispose()


# ---------------------------------------------------------------------------------------
# Through the service
# ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tokens(url: str, users: list[str]) -> list[str]:
    """One API token per client (the tables are created on the way)."""
    from bagbot_core.db import get_engine, session_factory
    from bagbot_core.tokens import create_token

    with session_factory(get_engine(url))() as session:
        return [create_token(session, user, label="benchmark")[0] for user in users]


@contextlib.contextmanager
def serving(url: str, workers: int, root: Path, server: Any = None) -> Iterator[str]:
    """``bagbot serve`` on a free loopback port until the block ends (then SIGTERM);
    yields its base URL. ``server``: the fake Binance the ``binance`` connector uses."""
    from benchmarks.harness import _bagbot_command, _credentials

    root.mkdir(parents=True, exist_ok=True)
    config = root / "bagbot.toml"
    config.write_text("[connectors.binance]\nenable_rate_limit = false\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BAGBOT_") and k not in _NOT_INHERITED}
    env.update(BAGBOT_SERVICE_RATE_LIMIT="0", BAGBOT_LOG_FILE=str(root / "audit.jsonl"),
               BAGBOT_CONFIG=str(config), XDG_DATA_HOME=str(root / "xdg"),
               XDG_CONFIG_HOME=str(root / "xdg-config"))
    if server is not None:
        key, secret = _credentials()
        env.update(BAGBOT_BINANCE_API_KEY=key, BAGBOT_BINANCE_API_SECRET=secret,
                   BAGBOT_BINANCE_API_URL=server.url)
    port = _free_port()
    with open(root / "serve.log", "ab") as log:
        process = subprocess.Popen(
            [*_bagbot_command(), "--database-url", url, "serve", "--port", str(port),
             "--workers", str(workers)], env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(process, base, root / "serve.log")
            yield base
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(process: subprocess.Popen[bytes], base: str, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + START_TIMEOUT
    with httpx.Client(base_url=base, timeout=5) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"bagbot serve exited with {process.returncode}: "
                                   f"{log.read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if client.get("/readyz").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("bagbot serve did not become ready")
            time.sleep(0.05)


async def through_service(cfg: Any, url: str, connector: str, root: Path, *,
                          workers: int = 1, server: Any = None) -> Any:
    """``conc_inflight`` HTTP clients, one token and one connection each."""
    import httpx

    from bagbot_core.db import dispose_engines
    from benchmarks.harness import PAYLOAD

    tokens = _tokens(url, _users(cfg.conc_inflight))
    dispose_engines()
    body = {"connector": connector, **PAYLOAD}
    with serving(url, workers, root, server) as base:
        clients = [httpx.AsyncClient(
            base_url=base, timeout=60, headers={"Authorization": f"Bearer {token}"},
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
            for token in tokens]
        try:
            async def one(client: int, _: int) -> None:
                response = await clients[client].post("/v1/orders", json=body)
                if response.status_code != 201:
                    raise RuntimeError(f"the service answered {response.status_code}: "
                                       f"{response.text[:500]}")

            await _closed_loop(cfg.conc_inflight, cfg.conc_inflight, one)  # warm-up
            if server is not None:
                server.reset()
            sample = await _closed_loop(cfg.n, cfg.conc_inflight, one)
            if server is not None:
                sample.requests = server.counts()
            return sample
        finally:
            await asyncio.gather(*(client.aclose() for client in clients))


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


async def run_service(cfg: Any, log: Callable[[str], None], scenarios: dict[str, Any],
                      dbs: Any, server: Any = None) -> None:
    """Run the service scenarios ``cfg.only`` asks for (all of them when it names none);
    ``server``: the harness's fake Binance process, if it started one."""
    from benchmarks.harness import FakeServerProcess, _new, _pair

    wanted = [k for k in SCENARIOS if not cfg.only or k in cfg.only]
    pg_problem = dbs.postgres_reachable()
    if pg_problem is not None:
        wanted = [k for k in wanted if not k.startswith("pg_")]
    if not wanted:
        return
    own_server = server is None and "svc_binance" in wanted
    if own_server:
        server = FakeServerProcess()
    clients = (f"N={cfg.n} orders, {cfg.conc_inflight} clients in a closed loop, one user "
               "each")
    settings = {
        "svc_paper": f"{clients}; bagbot serve --workers 1; SQLite file (WAL)",
        "svc_binance": f"{clients}; fake adds {cfg.conc_latency * 1e3:g} ms per request; "
                       "bagbot serve --workers 1; SQLite file (WAL)",
        "pg_svc_paper": f"{clients}; bagbot serve --workers 2; PostgreSQL, a fresh schema",
    }
    roots = itertools.count()
    try:
        for key in wanted:
            scenarios[key] = _new(key, settings[key])
        for rep in range(cfg.reps):
            for key in wanted:
                scenario = scenarios[key]
                t0 = time.perf_counter()
                new_db = dbs.postgres if key.startswith("pg_") else dbs.sqlite
                workers = 2 if key == "pg_svc_paper" else 1
                exchange = server if key == "svc_binance" else None
                connector = "binance" if exchange is not None else "paper"
                if exchange is not None:
                    exchange.set_latency(cfg.conc_latency)
                root = dbs.root / f"service-{next(roots)}"
                await _pair(scenario, rep, {
                    "in-process": lambda d=new_db, c=connector, x=exchange: in_process(
                        cfg, d(), c, x),
                    "service": lambda d=new_db, c=connector, x=exchange, r=root, w=workers:
                        through_service(cfg, d(), c, r, workers=w, server=x),
                })
                log(f"rep {rep + 1}/{cfg.reps} {key}: ratio {scenario.ratios()[-1]:.3f} "
                    f"({time.perf_counter() - t0:.1f} s)")
    finally:
        if own_server:
            server.close()
