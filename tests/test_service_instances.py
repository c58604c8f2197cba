"""Several ``bagbot serve`` processes on one PostgreSQL schema serve the same users as one
service: two single-process instances (A, B) and one with two workers (C), real processes on
loopback, the paper exchange in the same database.

Idempotency keys, risk limits and the kill switch hold across them (they live in the
database, not in a process), no order is lost or duplicated, and an instance killed with
``kill -9`` leaves rows that the next start-up's reconcile resolves.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import os
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from sqlalchemy import func, select, update

from bagbot_core.db import get_engine, session_factory
from bagbot_core.models import Order, utcnow
from bagbot_core.paper.models import PaperOrderRow
from bagbot_core.testing.databases import postgres_schema_url
from tests import environment
from tests.service_helpers import Served, make_token, serve_process

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

MARKET = {"connector": "paper", "symbol": "BTC/USDT", "side": "buy", "type": "market",
          "amount": "0.001"}
#: The paper exchange's ask for BTC/USDT (reference 50000, spread 0.0001).
ASK = Decimal("50005")
#: The daily notional limit of the user ``capped``, set in the config file every instance
#: reads: nine 0.01 BTC market buys (4500.45 USD) fit, a tenth (5000.50) does not.
DAILY_LIMIT = Decimal("5000")
CONFIG = f'[risk.users.capped]\ndaily_notional_usd = "{DAILY_LIMIT}"\n'
#: Two single-process instances and one with two workers.
INSTANCES = {"A": (), "B": (), "C": ("--workers", "2")}


@attrs.frozen
class Cluster:
    url: str
    served: dict[str, Served]
    env: dict[str, str]
    tmp: Path

    def token(self, user: str, **kwargs: Any) -> str:
        return make_token(self.url, user, **kwargs)

    def rows(self, **where: Any) -> list[Order]:
        with session_factory(get_engine(self.url))() as session:
            query = select(Order).filter_by(**where).order_by(Order.id)
            return list(session.scalars(query))

    def paper_orders(self, client_order_id: str | None = None) -> int:
        with session_factory(get_engine(self.url))() as session:
            query = select(func.count()).select_from(PaperOrderRow)
            if client_order_id is not None:
                query = query.where(PaperOrderRow.client_order_id == client_order_id)
            return int(session.scalar(query) or 0)


def clean_env(tmp: Path, name: str, **extra: str) -> dict[str, str]:
    """No developer setting leaks in; the audit log goes to a data directory that does not
    exist yet (``bagbot serve`` creates it)."""
    env = {k: v for k, v in os.environ.items() if k not in environment.SETTINGS}
    env.update(XDG_DATA_HOME=str(tmp / f"data-{name}"), XDG_CONFIG_HOME=str(tmp / "cfg"),
               BAGBOT_SERVICE_RATE_LIMIT="0", **extra)
    return env


@contextlib.contextmanager
def started(url: str, specs: dict[str, tuple[dict[str, str], tuple[str, ...]]],
            tmp: Path) -> Iterator[dict[str, Served]]:
    """``bagbot serve`` processes started together; all stopped (SIGTERM) at the end."""
    managers = {name: serve_process(url, env, args, log=tmp / f"serve-{name}.log")
                for name, (env, args) in specs.items()}
    with contextlib.ExitStack() as stack:
        with concurrent.futures.ThreadPoolExecutor(len(managers)) as pool:
            futures = {name: pool.submit(m.__enter__) for name, m in managers.items()}
        served, failures = {}, []
        for name, future in futures.items():
            try:
                served[name] = future.result()
            except Exception as exc:
                failures.append(exc)
            else:
                stack.push(managers[name].__exit__)
        if failures:
            raise failures[0]
        yield served


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("instances")
    config = tmp / "bagbot.toml"
    config.write_text(CONFIG, encoding="utf-8")
    with postgres_schema_url(prefix="bagbot_instances") as url:
        make_token(url, "setup")  # creates the tables once, before the processes race to
        # Background reconcile off: only the restarted instance of the kill test reconciles.
        specs = {name: (clean_env(tmp, name, BAGBOT_CONFIG=str(config),
                                  BAGBOT_RECONCILE_INTERVAL="0"), args)
                 for name, args in INSTANCES.items()}
        with started(url, specs, tmp) as served:
            yield Cluster(url, served, specs["A"][0], tmp)


def post(served: Served, token: str, path: str, body: object,
         key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    with httpx.Client(base_url=served.url, timeout=60) as client:
        return client.post(path, json=body, headers=headers)


def in_parallel(calls: list[tuple[Any, ...]], workers: int = 20) -> list[httpx.Response]:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda call: post(*call), calls))


def test_one_idempotency_key_sent_to_every_instance_makes_one_order(
        cluster: Cluster) -> None:
    token = cluster.token("ida")
    servers = list(cluster.served.values())
    calls = [(servers[n % len(servers)], token, "/v1/orders", MARKET, "same-key-20")
             for n in range(20)]
    responses = in_parallel(calls)
    # Exactly one 201, in whichever process: the router says which call created the row,
    # so a retry that lost the insert to another process is a 200 like the others.
    assert sorted(r.status_code for r in responses) == [200] * 19 + [201], [
        r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    rows = cluster.rows(user_id="ida")
    assert [(o.client_order_id, o.status) for o in rows] == [("same-key-20", "filled")]
    assert cluster.paper_orders("same-key-20") == 1


def test_many_orders_across_instances_none_lost_none_duplicated(cluster: Cluster) -> None:
    """Every accepted response names a row of its own; refusals that record a row
    (a risk limit) have one, refusals before any row (a malformed body) have none."""
    tokens = {user: cluster.token(user) for user in ("ann", "bob", "cyd", "dee")}
    servers = list(cluster.served.values())
    calls, kinds = [], {}
    for n in range(72):
        user = list(tokens)[n % len(tokens)]
        key = f"many-{n}"
        kind = "refused" if n % 9 == 4 else "malformed" if n % 9 == 7 else "order"
        body = {**MARKET, "amount": {"order": "0.001", "refused": "11",
                                     "malformed": 0.001}[kind]}
        calls.append((servers[n % len(servers)], tokens[user], "/v1/orders", body, key))
        kinds[key] = kind
    paper_before = cluster.paper_orders()
    responses = in_parallel(calls, workers=24)

    by_key = {call[4]: response for call, response in zip(calls, responses, strict=True)}
    statuses = Counter((kinds[k], r.status_code) for k, r in by_key.items())
    assert statuses == {("order", 201): 56, ("refused", 422): 8, ("malformed", 422): 8}
    rows = [o for o in cluster.rows() if o.user_id in tokens]
    by_cid = {o.client_order_id: o for o in rows}
    assert len(by_cid) == len(rows)  # no client order id twice
    assert set(by_cid) == {k for k, kind in kinds.items() if kind != "malformed"}
    for key, response in by_key.items():
        body = response.json()
        if kinds[key] == "order":
            assert body["id"] == by_cid[key].id and by_cid[key].status == "filled"
        elif kinds[key] == "refused":
            assert body["type"] == "RiskCheckError" and body["order"]["id"] == by_cid[key].id
            assert by_cid[key].status == "rejected"
        else:
            assert body["type"] == "ValidationError" and body["order"] is None
    assert len({o.id for o in rows}) == len(rows) == 64
    assert cluster.paper_orders() - paper_before == 56


def test_a_daily_notional_limit_from_the_config_file_holds_across_instances(
        cluster: Cluster) -> None:
    token = cluster.token("capped")
    servers = list(cluster.served.values())
    order = {**MARKET, "amount": "0.01"}
    responses = in_parallel([(servers[n % len(servers)], token, "/v1/orders", order)
                             for n in range(24)])
    accepted = [r for r in responses if r.status_code == 201]
    refused = [r for r in responses if r.status_code != 201]
    for response in refused:
        body = response.json()
        assert response.status_code == 422 and body["type"] == "RiskCheckError", body
        assert [v["check"] for v in body["details"]["violations"]] == ["daily_notional"]
    filled = [o for o in cluster.rows(user_id="capped") if o.status == "filled"]
    total = sum((o.filled_qty * o.avg_price for o in filled), Decimal(0))  # type: ignore[operator]
    assert len(filled) == len(accepted) == 9
    assert DAILY_LIMIT - Decimal("0.01") * ASK < total <= DAILY_LIMIT


def test_the_kill_switch_set_through_one_instance_stops_every_instance(
        cluster: Cluster) -> None:
    admin, user = cluster.token("root", admin=True), cluster.token("kim")
    a, b, c = (cluster.served[name] for name in "ABC")
    halted = post(a, admin, "/v1/halt", {"reason": "drill", "user": None, "connector": None})
    assert halted.status_code == 200 and halted.json()["state"] == "halted", halted.text
    try:
        # B, and both of C's workers (several requests), refuse: the state is in the database
        refusals = in_parallel([(b, user, "/v1/orders", MARKET)]
                               + [(c, user, "/v1/orders", MARKET)] * 6)
        for response in refusals:
            body = response.json()
            assert response.status_code == 422 and body["type"] == "RiskCheckError", body
            assert [v["check"] for v in body["details"]["violations"]] == ["trading_state"]
    finally:
        resumed = post(b, admin, "/v1/resume", {"reason": "drill over"})
    assert resumed.status_code == 200 and resumed.json()["state"] == "active", resumed.text
    accepted = in_parallel([(a, user, "/v1/orders", MARKET)]
                           + [(c, user, "/v1/orders", MARKET)] * 4)
    assert [r.status_code for r in accepted] == [201] * 5, [r.text for r in accepted]
    assert Counter(o.status for o in cluster.rows(user_id="kim")) == {"rejected": 7,
                                                                      "filled": 5}


def test_kill_9_with_orders_in_flight_then_start_up_reconcile_resolves_every_row(
        cluster: Cluster) -> None:
    """Instance D dies with ``kill -9`` while orders are in flight. What it leaves -- the
    rows still ``pending``, a row whose answer was lost (``unknown``, though the exchange
    filled it) and a ``pending`` row the exchange never saw -- is resolved by the first
    reconcile round of the next ``bagbot serve`` on the database."""
    token = cluster.token("crash")
    env = clean_env(cluster.tmp, "D")  # the default reconcile interval: a round at start-up
    with started(cluster.url, {"D": (env, ())}, cluster.tmp) as served:
        d = served["D"]
        lost = post(d, token, "/v1/orders", MARKET, "answer-lost")
        assert lost.status_code == 201, lost.text
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(post, d, token, "/v1/orders", MARKET, f"flight-{n}")
                       for n in range(96)]
            done_before_kill = _first(futures, 8)
            assert d.process is not None
            d.process.kill()  # SIGKILL: no shutdown, no drain, no reconcile
            d.process.wait()
            answered = {f.result().json()["client_order_id"] for f in done_before_kill}
            for future in futures:  # the rest: answered in time, or the connection died
                with contextlib.suppress(httpx.TransportError):
                    if future.result().status_code == 201:
                        answered.add(future.result().json()["client_order_id"])

    with session_factory(get_engine(cluster.url))() as session:
        session.execute(update(Order).where(Order.client_order_id == "answer-lost").values(
            status="unknown", filled_qty=Decimal(0), avg_price=None, external_id=None))
        session.add(Order(user_id="crash", connector="paper", symbol="BTC/USDT", side="buy",
                          order_type="market", qty=Decimal("0.001"), status="pending",
                          client_order_id="never-sent", testnet=True))
        # Time passes: every unresolved row is older than the reconcile grace.
        session.execute(update(Order).where(Order.status.in_(("pending", "unknown")))
                        .values(created_at=utcnow() - dt.timedelta(hours=1)))
        session.commit()
    left = {o.client_order_id: o.status for o in cluster.rows(user_id="crash")
            if o.status in ("pending", "unknown")}
    assert {"answer-lost", "never-sent"} <= set(left)
    assert not answered & set(left)  # an answered order is never left unresolved

    with started(cluster.url, {"D": (env, ())}, cluster.tmp):
        deadline = time.monotonic() + 30
        while any(o.status in ("pending", "unknown") for o in cluster.rows(user_id="crash")):
            assert time.monotonic() < deadline, "the start-up reconcile did not resolve"
            time.sleep(0.2)
    rows = {o.client_order_id: o for o in cluster.rows(user_id="crash")}
    assert rows["answer-lost"].status == "filled"
    assert rows["answer-lost"].filled_qty == Decimal("0.001")
    assert rows["never-sent"].status == "rejected"
    for cid, order in rows.items():  # the row says what the exchange did, no more, no less
        on_paper = cluster.paper_orders(cid)
        assert (order.status, on_paper) in (("filled", 1), ("rejected", 0)), (cid, order.status)


def _first(futures: list[concurrent.futures.Future[httpx.Response]],
           count: int) -> list[concurrent.futures.Future[httpx.Response]]:
    """The first ``count`` futures to complete (waits for them)."""
    done: list[concurrent.futures.Future[httpx.Response]] = []
    for future in concurrent.futures.as_completed(futures):
        done.append(future)
        if len(done) == count:
            break
    return done
