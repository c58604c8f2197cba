"""The scenarios: bagbot against the hand-written floor, measured in one run.

Every scenario runs its sides back to back in each repetition (order alternating between
repetitions, so slow drift on a shared machine hits both), each side on a fresh database file
and fresh clients, after a warm-up that is not timed (ccxt import, market load, first
connection). See ``benchmarks/README.md`` for what each side does and the fairness rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from benchmarks.risk import SEED_ROWS, seed
from benchmarks.service import SCENARIOS as SERVICE_SCENARIOS
from benchmarks.service import run_service

SYMBOL = "BTC/USDT"
AMOUNT = "0.0002"  # 10 USDT at the fake's 50000: above Binance's 5 USDT minimum notional
PAYLOAD = {"symbol": SYMBOL, "side": "buy", "type": "market", "amount": AMOUNT}
USER = "bench"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

DB_SETTINGS = ("SQLite file, WAL, synchronous=FULL, BEGIN IMMEDIATE, busy_timeout 30 s "
               "(bagbot_core.db.get_engine for both sides)")
CCXT_SETTINGS = ("ccxt binance, enableRateLimit=False (local fake), spot-only markets, "
                 "maxRetriesOnFailure=0, sandbox URLs with the host swapped to 127.0.0.1")


@dataclass
class Config:
    quick: bool = False
    reps: int = 5
    n: int = 500
    naive_n: int = 30
    conc_total: int = 1000
    conc_inflight: int = 50
    conc_latency: float = 0.020
    seq_latency: float = 0.005
    startup_reps: int = 7
    warmup: int = 20
    postgres_url: str | None = DEFAULT_PG
    only: tuple[str, ...] = ()
    seed_rows: int = SEED_ROWS

    @classmethod
    def quick_mode(cls) -> Config:
        return cls(quick=True, reps=1, n=15, naive_n=2, conc_total=40, conc_inflight=10,
                   startup_reps=1, warmup=3, postgres_url=None, seed_rows=2000)


@dataclass
class Sample:
    """One side of one repetition."""

    latencies: list[float]
    wall: float
    requests: dict[str, int] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.latencies)

    @property
    def median(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p99(self) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[98]

    @property
    def throughput(self) -> float:
        return self.n / self.wall

    def summary(self) -> dict[str, Any]:
        return {"n": self.n, "median_ms": self.median * 1e3, "p99_ms": self.p99 * 1e3,
                "throughput_per_s": self.throughput, "wall_s": self.wall,
                "requests": self.requests}


@dataclass
class Scenario:
    key: str
    title: str
    metric: str  # "latency": ratio of medians (lower is better); "throughput": higher is better
    target: float | None  # bagbot/floor must be <= target ("latency") or >= ("throughput")
    sides: tuple[str, str] = ("floor", "bagbot")
    settings: str = ""
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def ratios(self) -> list[float]:
        base, ours = self.sides
        pairs = zip(self.samples.get(base, []), self.samples.get(ours, []), strict=False)
        if self.metric == "throughput":
            return [o.throughput / b.throughput for b, o in pairs]
        if self.metric == "speedup":
            return [b.median / o.median for b, o in pairs]
        return [o.median / b.median for b, o in pairs]

    def verdict(self) -> str | None:
        ratios = self.ratios()
        if self.target is None or not ratios:
            return None
        value = statistics.median(ratios)
        ok = value <= self.target if self.metric == "latency" else value >= self.target
        return "met" if ok else "MISSED"

    def as_json(self) -> dict[str, Any]:
        ratios = self.ratios()
        return {
            "title": self.title, "metric": self.metric, "target": self.target,
            "settings": self.settings, "notes": self.notes,
            "ratio_median": statistics.median(ratios) if ratios else None,
            "ratios": ratios, "verdict": self.verdict(),
            "samples": {side: [s.summary() for s in samples]
                        for side, samples in self.samples.items()},
        }


# ---------------------------------------------------------------------------------------
# The fake exchange, in its own process
# ---------------------------------------------------------------------------------------


class FakeServerProcess:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.fake_server"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        line = self._read()
        if not line.startswith("ready "):
            raise RuntimeError(f"fake server did not start: {line!r}")
        self.url = line.split(" ", 1)[1]
        if urlsplit(self.url).hostname != "127.0.0.1":
            raise RuntimeError(f"fake server is not on loopback: {self.url}")

    def _read(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def command(self, text: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self._read()

    def set_latency(self, seconds: float) -> None:
        self.command(f"latency {seconds}")

    def reset(self) -> None:
        self.command("reset")

    def counts(self) -> dict[str, int]:
        return json.loads(self.command("counts"))  # type: ignore[no-any-return]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.command("quit")
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _credentials() -> tuple[str, str]:
    from bagbot_binance.testing import DEFAULT_API_KEY, DEFAULT_API_SECRET

    return DEFAULT_API_KEY, DEFAULT_API_SECRET


# ---------------------------------------------------------------------------------------
# Databases
# ---------------------------------------------------------------------------------------


class Databases:
    """Fresh database URLs: SQLite files in a temporary directory, PostgreSQL schemas."""

    def __init__(self, root: Path, postgres_url: str | None) -> None:
        self.root = root
        self.postgres_base = postgres_url
        self.schemas: list[str] = []
        self._count = 0

    def sqlite(self) -> str:
        self._count += 1
        return f"sqlite:///{self.root / f'bench-{self._count}.db'}"

    def postgres(self) -> str:
        from sqlalchemy import create_engine, text

        assert self.postgres_base is not None
        schema = f"bagbot_bench_{uuid.uuid4().hex[:10]}"
        admin = create_engine(self.postgres_base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        admin.dispose()
        self.schemas.append(schema)
        sep = "&" if "?" in self.postgres_base else "?"
        return f"{self.postgres_base}{sep}options={quote(f'-csearch_path={schema}')}"

    def postgres_reachable(self) -> str | None:
        """``None`` when reachable, else why not."""
        if self.postgres_base is None:
            return "disabled"
        from sqlalchemy import create_engine, text

        try:
            engine = create_engine(self.postgres_base)
            with engine.connect() as conn:
                conn.execute(text("select 1"))
            engine.dispose()
        except Exception as exc:
            return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        return None

    def drop(self) -> None:
        if not self.schemas:
            return
        from sqlalchemy import create_engine, text

        admin = create_engine(self.postgres_base or "", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for schema in self.schemas:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def _sync_session(url: str) -> Any:
    from bagbot_core.db import get_engine, session_factory

    return session_factory(get_engine(url))()


def _async_sessions(url: str) -> Any:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from bagbot_core.db import get_async_engine

    engine = get_async_engine(url)
    return engine, async_sessionmaker(engine, expire_on_commit=False)


def _floor_row(answer: dict[str, Any], client_order_id: str) -> Any:
    """The row a hand-written router stores after ``create_order``: same table, same values."""
    from bagbot_core.models import Order

    info = answer.get("info") or {}
    filled = Decimal(str(info.get("executedQty", "0")))
    cost = Decimal(str(info.get("cummulativeQuoteQty", "0")))
    return Order(
        user_id=USER, connector="binance", symbol=SYMBOL, side="buy", order_type="market",
        qty=Decimal(AMOUNT), price=None, testnet=True, client_order_id=client_order_id,
        status="filled" if info.get("status") == "FILLED" else "open",
        external_id=str(answer["id"]), filled_qty=filled,
        avg_price=(cost / filled) if filled else None, exchange_status=info.get("status"),
    )


def _client_id() -> str:
    return "bb" + uuid.uuid4().hex


# ---------------------------------------------------------------------------------------
# The exchange clients
# ---------------------------------------------------------------------------------------


def floor_exchange(url: str) -> Any:
    """A bare ccxt binance client with the options bagbot's connector uses."""
    import ccxt.async_support as ccxt_async

    key, secret = _credentials()
    exchange = ccxt_async.binance({
        "apiKey": key, "secret": secret, "enableRateLimit": False, "timeout": 10_000,
        "options": {"maxRetriesOnFailure": 0, "defaultType": "spot",
                    "fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False,
                    "fetchMargins": False},
    })
    exchange.set_sandbox_mode(True)
    exchange.urls["api"] = {k: url + urlsplit(v).path for k, v in exchange.urls["api"].items()
                            if isinstance(v, str)}
    return exchange


def _registry(binance: bool = True) -> Any:
    """Built-in plugins (paper) plus bagbot-binance's, registered explicitly: the run does not
    depend on which other bagbot plugins happen to be installed."""
    from bagbot_core.plugins import PluginRegistry

    plugins: list[tuple[str, object]] = []
    if binance:
        import bagbot_binance.plugin

        plugins.append(("binance", bagbot_binance.plugin))
    return PluginRegistry(load_entrypoints=False, disabled=(), plugins=plugins)


def bagbot_router(url: str, risk_config: Any = None) -> Any:
    from bagbot_core.router import Router

    key, secret = _credentials()
    extra = {} if risk_config is None else {"risk_config": risk_config}
    return Router(_registry(), connector_config={"binance": {
        "api_key": key, "api_secret": secret, "api_url": url, "enable_rate_limit": False,
    }}, **extra)


async def _timed(count: int, one: Callable[[int], Awaitable[Any]]) -> Sample:
    latencies = []
    started = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        await one(i)
        latencies.append(time.perf_counter() - t0)
    return Sample(latencies, time.perf_counter() - started)


async def _timed_concurrent(total: int, inflight: int,
                            one: Callable[[int], Awaitable[Any]]) -> Sample:
    latencies: list[float] = []
    semaphore = asyncio.Semaphore(inflight)

    async def task(i: int) -> None:
        async with semaphore:
            t0 = time.perf_counter()
            await one(i)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(task(i) for i in range(total)))
    return Sample(latencies, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------
# Sides
# ---------------------------------------------------------------------------------------


async def floor_sequential(cfg: Config, server: FakeServerProcess, url: str) -> Sample:
    exchange = floor_exchange(server.url)
    session = _sync_session(url)
    try:
        await exchange.load_markets()

        async def one(_: int) -> None:
            cid = _client_id()
            answer = await exchange.create_order(SYMBOL, "market", "buy", AMOUNT, None,
                                                 {"clientOrderId": cid})
            session.add(_floor_row(answer, cid))
            session.commit()

        await _timed(cfg.warmup, one)
        server.reset()
        sample = await _timed(cfg.n, one)
        sample.requests = server.counts()
        return sample
    finally:
        session.close()
        await exchange.close()


async def bagbot_sequential(cfg: Config, server: FakeServerProcess, url: str, *,
                            controls: bool = False) -> Sample:
    """``controls``: every risk control on (:mod:`benchmarks.risk`)."""
    from benchmarks import risk

    router = bagbot_router(server.url, risk.risk_config() if controls else None)
    session = _sync_session(url)
    sent = iter(range(10**9))  # warm-up and timed orders cycle through amounts together
    try:
        async def one(_: int) -> None:
            payload = risk.payload(next(sent), AMOUNT) if controls else PAYLOAD
            await router.route_order("binance", payload, session, USER)

        await _timed(cfg.warmup, one)
        server.reset()
        sample = await _timed(cfg.n, one)
        sample.requests = server.counts()
        return sample
    finally:
        session.close()
        await router.aclose()


async def naive_sequential(cfg: Config, server: FakeServerProcess, url: str) -> Sample:
    """The seed's sketch: a new ccxt client and ``load_markets`` for every order."""
    session = _sync_session(url)
    try:
        async def one(_: int) -> None:
            exchange = floor_exchange(server.url)
            try:
                await exchange.load_markets()
                cid = _client_id()
                answer = await exchange.create_order(SYMBOL, "market", "buy", AMOUNT, None,
                                                     {"clientOrderId": cid})
            finally:
                await exchange.close()
            session.add(_floor_row(answer, cid))
            session.commit()

        await _timed(1, one)
        server.reset()
        sample = await _timed(cfg.naive_n, one)
        sample.requests = server.counts()
        return sample
    finally:
        session.close()


async def floor_concurrent(cfg: Config, server: FakeServerProcess, url: str) -> Sample:
    exchange = floor_exchange(server.url)
    engine, sessions = _async_sessions(url)
    try:
        await exchange.load_markets()

        async def one(_: int) -> None:
            cid = _client_id()
            answer = await exchange.create_order(SYMBOL, "market", "buy", AMOUNT, None,
                                                 {"clientOrderId": cid})
            async with sessions() as session:
                session.add(_floor_row(answer, cid))
                await session.commit()

        await _timed_concurrent(cfg.conc_inflight, cfg.conc_inflight, one)
        server.reset()
        sample = await _timed_concurrent(cfg.conc_total, cfg.conc_inflight, one)
        sample.requests = server.counts()
        return sample
    finally:
        await exchange.close()
        await engine.dispose()


async def bagbot_concurrent(cfg: Config, server: FakeServerProcess, url: str) -> Sample:
    router = bagbot_router(server.url)
    engine, sessions = _async_sessions(url)
    try:
        async def one(_: int) -> None:
            async with sessions() as session:
                await router.route_order("binance", PAYLOAD, session, USER)

        await _timed_concurrent(cfg.conc_inflight, cfg.conc_inflight, one)
        server.reset()
        sample = await _timed_concurrent(cfg.conc_total, cfg.conc_inflight, one)
        sample.requests = server.counts()
        return sample
    finally:
        await router.aclose()
        await engine.dispose()


async def insert_only(cfg: Config, url: str) -> Sample:
    """One bare ORM INSERT + COMMIT per order (the paper scenario's floor)."""
    session = _sync_session(url)
    try:
        async def one(_: int) -> None:
            cid = _client_id()
            session.add(_floor_row({"id": cid, "info": {"executedQty": AMOUNT,
                                                        "cummulativeQuoteQty": "10.001",
                                                        "status": "FILLED"}}, cid))
            session.commit()

        await _timed(cfg.warmup, one)
        return await _timed(cfg.n, one)
    finally:
        session.close()


async def bagbot_paper(cfg: Config, url: str) -> Sample:
    from bagbot_core.router import Router

    router = Router(_registry(binance=False))
    session = _sync_session(url)
    try:
        async def one(_: int) -> None:
            await router.route_order("paper", PAYLOAD, session, USER)

        await _timed(cfg.warmup, one)
        return await _timed(cfg.n, one)
    finally:
        session.close()
        await router.aclose()


# ---------------------------------------------------------------------------------------
# Start-up
# ---------------------------------------------------------------------------------------

_CCXT_PROBE = (
    "import sys\n"
    "from bagbot_core.cli import main\n"
    "main(sys.argv[1:])\n"
    "sys.stderr.write('CCXT_IMPORTED=%s\\n' % ('ccxt' in sys.modules))\n"
)


def _bagbot_command() -> list[str]:
    script = Path(sys.executable).with_name("bagbot")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bagbot_core.cli"]


def startup_samples(cfg: Config, args: list[str], env: dict[str, str]) -> tuple[Sample, bool]:
    command = [*_bagbot_command(), *args]
    times = []
    for _ in range(cfg.startup_reps + 1):
        t0 = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - t0)
    probe = subprocess.run([sys.executable, "-c", _CCXT_PROBE, *args], check=True,
                           capture_output=True, text=True, env=env)
    imported = "CCXT_IMPORTED=True" in probe.stderr
    return Sample(times[1:], sum(times[1:])), imported  # the first run warms the disk cache


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------

SCENARIOS: dict[str, tuple[str, str, float | None, tuple[str, str]]] = {
    # key: (title, metric, target, sides). The speed targets: group commit lets orders in
    # flight beat a floor that commits once per order, and sequential routing costs at most
    # a fifth more than the floor.
    "seq": ("1-2. sequential, no added latency", "latency", 1.2, ("floor", "bagbot")),
    "seq5": ("sequential, fake adds 5 ms per request", "latency", 1.05, ("floor", "bagbot")),
    "naive": ("3. naive (new client + load_markets per order)", "speedup", 100.0,
              ("naive", "bagbot")),
    "conc": ("4. concurrent, fake adds 20 ms", "throughput", 1.0, ("floor", "bagbot")),
    "paper": ("5. paper vs one INSERT+COMMIT", "latency", 2.5, ("insert", "bagbot")),
    "help": ("6. `bagbot --help` (wall, s)", "absolute", 0.3, ("limit", "bagbot")),
    "plugins": ("6. `bagbot plugins` (wall, s)", "absolute", 0.3, ("limit", "bagbot")),
    "pg_seq": ("7. PostgreSQL sequential", "latency", 1.2, ("floor", "bagbot")),
    "pg_conc": ("7. PostgreSQL concurrent, 20 ms", "throughput", 1.0, ("floor", "bagbot")),
    "risk": ("8. every risk control on vs the floor", "latency", 1.3, ("floor", "bagbot")),
    "rows": ("8. controls on: 100,000 rows vs empty", "latency", 1.1, ("empty", "100k")),
    "pg_risk": ("8. PostgreSQL, every risk control on vs the floor", "latency", 1.3,
                ("floor", "bagbot")),
    "pg_rows": ("8. PostgreSQL, controls on: 100,000 rows vs empty", "latency", 1.1,
                ("empty", "100k")),
    **SERVICE_SCENARIOS,  # the HTTP service: benchmarks/service.py
}


def _new(key: str, settings: str) -> Scenario:
    title, metric, target, sides = SCENARIOS[key]
    return Scenario(key, title, metric, target, sides, settings)


async def _pair(scenario: Scenario, rep: int,
                sides: dict[str, Callable[[], Awaitable[Sample]]]) -> None:
    from bagbot_core.db import dispose_engines

    order = list(sides) if rep % 2 == 0 else list(reversed(sides))
    for side in order:
        sample = await sides[side]()
        dispose_engines()
        scenario.samples.setdefault(side, []).append(sample)


async def run_async(cfg: Config, log: Callable[[str], None], scenarios: dict[str, Scenario],
                    dbs: Databases) -> None:
    wanted = [k for k in ("seq", "seq5", "naive", "conc", "paper", "pg_seq", "pg_conc",
                          "risk", "rows", "pg_risk", "pg_rows")
              if not cfg.only or k in cfg.only]
    needs_exchange = any(k != "paper" for k in wanted)
    server = FakeServerProcess() if needs_exchange else None
    try:
        if needs_exchange:
            import ccxt.async_support  # noqa: F401 - the one-off import is not per order

        pg_problem = dbs.postgres_reachable()
        if pg_problem is not None and cfg.postgres_url is not None:
            log(f"PostgreSQL scenarios skipped: {pg_problem}")
        conc = (f"{cfg.conc_total} orders, {cfg.conc_inflight} in flight, fake adds "
                f"{cfg.conc_latency * 1e3:g} ms per request; async sessions (aiosqlite / "
                "psycopg async) on both sides")
        if pg_problem is not None:
            wanted = [k for k in wanted if not k.startswith("pg_")]
        for key in wanted:
            settings = {
                "seq": f"N={cfg.n}, fake adds 0 ms; {DB_SETTINGS}",
                "seq5": f"N={cfg.n}, fake adds {cfg.seq_latency * 1e3:g} ms; {DB_SETTINGS}",
                "naive": f"naive N={cfg.naive_n}, bagbot N={cfg.n}; {DB_SETTINGS}",
                "conc": f"{conc}; {DB_SETTINGS}",
                "paper": f"N={cfg.n}; {DB_SETTINGS}",
                "pg_seq": f"N={cfg.n}, fake adds 0 ms; PostgreSQL (psycopg 3), default "
                          "isolation, a fresh schema",
                "pg_conc": f"{conc}; PostgreSQL",
                "risk": f"N={cfg.n}, fake adds 0 ms; every control on; {DB_SETTINGS}",
                "rows": f"N={cfg.n}, fake adds 0 ms; every control on; {cfg.seed_rows:,} rows "
                        f"(100 users, 30 days) vs an empty table; {DB_SETTINGS}",
                "pg_risk": f"N={cfg.n}, fake adds 0 ms; every control on; PostgreSQL",
                "pg_rows": f"N={cfg.n}, fake adds 0 ms; every control on; {cfg.seed_rows:,} "
                           "rows vs an empty table; PostgreSQL, analyzed",
            }[key]
            scenarios[key] = _new(key, settings)
        for rep in range(cfg.reps):
            for key in wanted:
                scenario = scenarios[key]
                t0 = time.perf_counter()
                if key != "paper":
                    assert server is not None
                if key in ("seq", "seq5", "naive", "pg_seq"):
                    server.set_latency(cfg.seq_latency if key == "seq5" else 0)
                    new_db = dbs.postgres if key == "pg_seq" else dbs.sqlite
                    floor = naive_sequential if key == "naive" else floor_sequential
                    base = "naive" if key == "naive" else "floor"
                    await _pair(scenario, rep, {
                        base: lambda f=floor, d=new_db: f(cfg, server, d()),
                        "bagbot": lambda d=new_db: bagbot_sequential(cfg, server, d()),
                    })
                elif key in ("conc", "pg_conc"):
                    server.set_latency(cfg.conc_latency)
                    new_db = dbs.postgres if key == "pg_conc" else dbs.sqlite
                    await _pair(scenario, rep, {
                        "floor": lambda d=new_db: floor_concurrent(cfg, server, d()),
                        "bagbot": lambda d=new_db: bagbot_concurrent(cfg, server, d()),
                    })
                elif key in ("risk", "pg_risk"):
                    server.set_latency(0)
                    new_db = dbs.postgres if key == "pg_risk" else dbs.sqlite
                    await _pair(scenario, rep, {
                        "floor": lambda d=new_db: floor_sequential(cfg, server, d()),
                        "bagbot": lambda d=new_db: bagbot_sequential(cfg, server, d(),
                                                                     controls=True),
                    })
                elif key in ("rows", "pg_rows"):
                    server.set_latency(0)
                    new_db = dbs.postgres if key == "pg_rows" else dbs.sqlite

                    def seeded(d: Callable[[], str] = new_db) -> str:
                        url = d()
                        seed(url, USER, rows=cfg.seed_rows)
                        return url

                    await _pair(scenario, rep, {
                        "empty": lambda d=new_db: bagbot_sequential(cfg, server, d(),
                                                                    controls=True),
                        "100k": lambda s=seeded: bagbot_sequential(cfg, server, s(),
                                                                   controls=True),
                    })
                elif key == "paper":
                    await _pair(scenario, rep, {
                        "insert": lambda: insert_only(cfg, dbs.sqlite()),
                        "bagbot": lambda: bagbot_paper(cfg, dbs.sqlite()),
                    })
                ratios = scenario.ratios()
                log(f"rep {rep + 1}/{cfg.reps} {key}: ratio {ratios[-1]:.3f} "
                    f"({time.perf_counter() - t0:.1f} s)")
        await run_service(cfg, log, scenarios, dbs, server)  # benchmarks/service.py
    finally:
        if server is not None:
            server.close()


def run(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Scenario]:
    from bagbot_core import audit

    scenarios: dict[str, Scenario] = {}
    with tempfile.TemporaryDirectory(prefix="bagbot-bench-") as tmp:
        root = Path(tmp)
        audit_path = root / "audit.jsonl"
        # Audit events are written (JSON lines to a file), as in production.
        with open(audit_path, "a", encoding="utf-8") as audit_file:
            audit.configure(fmt="json", stream=audit_file, force=True)
            dbs = Databases(root, cfg.postgres_url)
            try:
                asyncio.run(run_async(cfg, log, scenarios, dbs))
            finally:
                dbs.drop()
            audit.configure(force=True)
        env = {**os.environ, "XDG_DATA_HOME": str(root / "xdg")}
        for key, args in (("help", ["--help"]), ("plugins", ["plugins"])):
            if cfg.only and key not in cfg.only:
                continue
            scenario = _new(key, "whole process, wall clock, median of "
                                 f"{cfg.startup_reps} runs after one warm-up")
            sample, imported = startup_samples(cfg, args, env)
            scenario.samples["bagbot"] = [sample]
            scenario.notes.append(f"ccxt imported: {'YES' if imported else 'no'}")
            scenarios[key] = scenario
            log(f"{key}: median {sample.median:.3f} s, ccxt imported: {imported}")
    return scenarios


# ---------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------


def _spread(values: list[float], fmt: str = "{:.2f}") -> str:
    if not values:
        return "-"
    mid = fmt.format(statistics.median(values))
    if len(values) == 1:
        return mid
    return f"{mid} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _side_cells(samples: list[Sample], metric: str) -> str:
    med = _spread([s.median * 1e3 for s in samples])
    p99 = statistics.median([s.p99 * 1e3 for s in samples])
    cell = f"{med} / p99 {p99:.2f} ms"
    if metric == "throughput":
        cell += f"; {_spread([s.throughput for s in samples], '{:.0f}')} /s"
    return cell


def table(scenarios: dict[str, Scenario]) -> str:
    lines = [
        "| scenario | baseline: median / p99 per order | bagbot: median / p99 per order | "
        "bagbot/baseline (spread) | target | |",
        "|---|---|---|---|---|---|",
    ]
    for sc in scenarios.values():
        if sc.metric == "absolute":
            sample = sc.samples["bagbot"][0]
            lines.append(
                f"| {sc.title} | - | {_spread(sample.latencies, '{:.3f}')} s; {sc.notes[0]} | - "
                f"| ≤ {sc.target} s | {'met' if sample.median <= (sc.target or 0) else 'MISSED'} |")
            continue
        base, ours = sc.sides
        ratios = sc.ratios()
        target = {"latency": f"≤ {sc.target}x", "throughput": f"≥ {sc.target}x throughput",
                  "speedup": f"≥ {sc.target:g}x faster"}[sc.metric]
        label = {"latency": "", "throughput": " throughput", "speedup": "x faster"}[sc.metric]
        lines.append(
            f"| {sc.title} | {base}: {_side_cells(sc.samples[base], sc.metric)} | "
            f"{_side_cells(sc.samples[ours], sc.metric)} | {_spread(ratios)}{label} | {target} "
            f"| {sc.verdict() or ''} |")
    return "\n".join(lines)


def requests_report(scenarios: dict[str, Scenario]) -> str:
    lines = []
    for sc in scenarios.values():
        for side, samples in sc.samples.items():
            if samples and samples[0].requests:
                counts = ", ".join(f"{k} {v}" for k, v in sorted(samples[0].requests.items()))
                lines.append(f"- {sc.key} {side} ({samples[0].n} orders): {counts}")
    return "\n".join(lines)


def settings_report(scenarios: dict[str, Scenario]) -> str:
    lines = [f"- ccxt: {CCXT_SETTINGS}"]
    lines += [f"- {sc.key}: {sc.settings}" for sc in scenarios.values()]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import platform

    import sqlalchemy

    try:
        import ccxt

        ccxt_version = ccxt.__version__
    except ImportError:
        ccxt_version = "not installed"

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpu": cpu, "cores": os.cpu_count(), "ccxt": ccxt_version,
        "sqlalchemy": sqlalchemy.__version__, "sqlite": __import__("sqlite3").sqlite_version,
    }


def report_json(cfg: Config, scenarios: dict[str, Scenario]) -> dict[str, Any]:
    return {"config": asdict(cfg), "machine": machine(),
            "scenarios": {k: sc.as_json() for k, sc in scenarios.items()}}
