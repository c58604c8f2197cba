"""``route_order`` and the order operations that follow it (sync, cancel, reconcile).

The flow, and why it is ordered this way:

1. validate the payload (nothing untrusted goes further);
2. load the connector, its cached markets and a reference quote (every order type);
3. in one transaction that holds the user's lock (:mod:`bagbot_core.user_lock`): run every
   risk check (all violations collected; stateful ones read ``ctx.history``), round to the
   market, check again;
4. write the ``pending`` row with a fresh ``client_order_id`` and **commit**, which releases
   the lock -- no other process routed for the user in between, and the order exists in our
   database before it can exist on the exchange (on a SQLite file the commit does not wait
   for the disk: the order then waits for a flush it shares with the process's concurrent
   orders, :mod:`bagbot_core.group_commit`, and is sent only once its row is on disk);
5. send it, tagged with that client order id;
6. record the exchange's answer and commit.

A connector whose book is in the router's own database (the built-in paper exchange, see
:meth:`Router._submit_in_transaction`) skips the commit of step 4: steps 5 and 6 run in the
same transaction and one commit writes the row, the book and the answer together, so there
is no moment where the book has an order bagbot has no row for.

A definite refusal at any step leaves a ``rejected`` row and raises. A failure after step 5
started -- timeout, dropped connection, crash -- leaves ``pending``/``unknown``, never
``rejected``: the exchange may have the order, and :meth:`Router.reconcile` asks it by
client order id. Nothing is ever resent automatically.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any, NoReturn, TypeVar

import attrs
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import DBAPIError, OperationalError

from bagbot_core import audit, store, write_gate
from bagbot_core import group_commit as _group_commit
from bagbot_core.connector import Connector, ConnectorSettings
from bagbot_core.connector_config import (
    check_connector_config,
    merge_connector_config,
    read_connector_tables,
)
from bagbot_core.endpoints import warn_undeclared
from bagbot_core.errors import (
    BagbotError,
    ConfigurationError,
    ExchangeError,
    ExchangeOrderNotFoundError,
    ExchangeRejectedError,
    ExchangeUnavailableError,
    IdempotencyKeyReusedError,
    LiveTradingNotAllowedError,
    OrderStatusUnknownError,
    OrderValidationError,
    RateLimitedError,
    RiskCheckError,
)
from bagbot_core.exchange_state import Inconsistent, Stale, answer_summary
from bagbot_core.history import History
from bagbot_core.models import Order, utcnow
from bagbot_core.money import decimal_text
from bagbot_core.orders import ExchangeOrder, Market, OrderRequest, OrderType, Quote
from bagbot_core.params import validate_params
from bagbot_core.payload import (
    check_connector_name,
    connector_name_error,
    parse_order_payload,
    storable_connector_name,
)
from bagbot_core.plugins import PluginRegistry
from bagbot_core.reconcile_grace import (  # re-exported: the router owns the setting
    DEFAULT_RECONCILE_GRACE as DEFAULT_RECONCILE_GRACE,
)
from bagbot_core.risk import (
    ENV_SKIP_RISK_CHECKS,
    RiskContext,
    RiskLimits,
    RiskViolation,
    parse_skip_list,
    resolve_skipped,
    run_checks,
)
from bagbot_core.risk_config import RiskConfig
from bagbot_core.settings import Settings
from bagbot_core.status import OrderStatus
from bagbot_core.user_lock import lock_user

ENV_ALLOW_LIVE = "BAGBOT_ALLOW_LIVE"

T = TypeVar("T")


def new_client_order_id() -> str:
    """34 characters, ``[a-z0-9]``: unique across processes, valid on every exchange."""
    return "bb" + uuid.uuid4().hex


def live_allowed(environ: Mapping[str, str] | None = None) -> bool:
    """``BAGBOT_ALLOW_LIVE`` by the one boolean rule of :mod:`bagbot_core.settings`.

    :raises ConfigurationError: a value that is neither true nor false (``ture``).
    """
    return Settings.from_env(environ, only=("allow_live",)).allow_live


def _shown(value: object) -> str:
    """A caller's value for an error or a row: escaped, clipped, never raising."""
    try:
        return ascii(value)[:60]
    except Exception:
        return f"<{type(value).__name__}>"


class _Db:
    """Runs the synchronous :mod:`bagbot_core.store` functions on a Session or AsyncSession."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.is_async = hasattr(db, "run_sync")
        #: On an async SQLite session: this loop's gate to the write lock
        #: (:mod:`bagbot_core.write_gate`), held from a transaction's first statement to
        #: its end.
        self._gate = write_gate.gate_for(self.url()) if self.is_async else None
        self._holding = False

    async def _enter(self) -> None:
        """Take the gate before a statement that begins a transaction."""
        gate = self._gate
        if gate is None or self._holding or self.db.in_transaction():
            return
        if gate.locked():
            try:
                await asyncio.wait_for(gate.acquire(), _gate_timeout())
            except TimeoutError:  # a holder that does not end: SQLite's own lock decides
                return
        else:
            await gate.acquire()  # free: taken without a wait
        self._holding = True

    def _leave(self) -> None:
        """Give the gate back once no transaction is open."""
        if self._holding and not self.db.in_transaction():
            self._holding = False
            assert self._gate is not None
            self._gate.release()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if not self.is_async:
            return fn(self.db, *args, **kwargs)
        await self._enter()
        try:
            return await self._run_async(fn, *args, **kwargs)
        finally:
            self._leave()

    async def _run_async(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:

        def call(session: Any) -> T:
            # A commit here must not expire what the caller holds: outside the greenlet an
            # expired attribute cannot load, and loading it here would open a transaction
            # (on SQLite, the write lock) that nothing would end.
            expire = session.expire_on_commit
            session.expire_on_commit = False
            try:
                result = fn(session, *args, **kwargs)
                # A row expired before this call (by the caller's own commit) is loaded
                # while still inside the greenlet, and the read ended.
                touched = [*args, *(result if isinstance(result, list) else [result])]
                stale = [item for item in touched
                         if isinstance(item, Order) and sa_inspect(item).expired_attributes]
                if stale:
                    opened = not session.in_transaction()
                    for item in stale:
                        session.refresh(item)
                    if opened:
                        session.commit()
            finally:
                session.expire_on_commit = expire
            return result

        return await self.db.run_sync(call)  # type: ignore[no-any-return]

    async def rollback(self) -> None:
        if self.is_async:
            try:
                await self.db.rollback()
            finally:
                self._leave()
        else:
            self.db.rollback()

    async def release(self) -> None:
        """End a transaction that wrote nothing: a commit, because a rollback would also
        expire every row the caller holds; a rollback only if the commit fails."""
        try:
            if self.is_async:
                await self.db.commit()
                self._leave()
            else:
                self.db.commit()
        except Exception:
            await self.rollback()

    def url(self) -> str | None:
        bind = self.db.get_bind() if not self.is_async else self.db.bind
        if bind is None:
            return None
        url = _bind_urls.get(bind)
        if url is None:  # rendering and re-parsing the URL costs ~40 µs: once per engine
            from bagbot_core.db import sync_url

            url = _bind_urls[bind] = sync_url(bind.url.render_as_string(hide_password=False))
        return url


def _gate_timeout() -> float:
    """How long a transaction waits for the write gate: SQLite's busy timeout."""
    return Settings.from_env(only=("sqlite_busy_timeout_ms",)).sqlite_busy_timeout_ms / 1000


#: Engine -> its synchronous URL (an engine's URL never changes).
_bind_urls: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


async def _on_a_live_connection(runner: _Db, log: Any, event: str,
                                attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()``, once more if its first statement met a pooled connection the database
    had dropped (a restart, a cut connection; pings are skipped for connections used within
    the last half second, see :data:`bagbot_core.db.PING_BYPASS_SECONDS`).

    For a step whose transaction writes nothing before that statement fails: the rollback
    leaves nothing behind, and the second try runs on a new connection. ``event`` is the
    audit event that records the retry.
    """
    try:
        return await attempt()
    except DBAPIError as error:
        if not error.connection_invalidated:
            raise
        log.warning(event, reason="database connection lost", error=type(error.orig).__name__)
        if runner.db.in_transaction():
            await runner.rollback()
        return await attempt()


def _flusher(runner: _Db) -> _group_commit.Flusher | None:
    """The group flusher of the session's SQLite file; ``None`` for any other database:
    the pending row then commits with its own flush (PostgreSQL's server group-commits)."""
    url = runner.url()
    return _group_commit.for_url(url) if url is not None else None


_USER_ID_RULE = "user_id must be a non-empty string of at most 128 printable characters"


def _valid_user_id(user_id: object) -> bool:
    return (isinstance(user_id, str) and bool(user_id.strip()) and len(user_id) <= 128
            and user_id.isprintable())


class _DatabaseFailed(Exception):
    """The database failed during the atomic step (taking the lock, inserting the row)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@attrs.frozen
class _Inputs:
    """What the checks need that is fetched before the user's lock is taken."""

    connector_name: str
    user_id: str
    testnet: bool
    request: OrderRequest
    markets: Mapping[str, Market]
    quote: Quote | None


def _clip(value: object, size: int) -> str:
    """Untrusted text, cut to a column's size, made storable (no NUL, no lone surrogate)."""
    return store.storable(value[:size]) if isinstance(value, str) else ""


def _register_secrets(config: Mapping[str, Any]) -> None:
    from bagbot_core.secrets import Secret

    for key, value in config.items():
        if isinstance(value, Secret):
            audit.add_known_secret(value.reveal())
        elif isinstance(value, str) and audit.is_sensitive_key(str(key)):
            audit.add_known_secret(value)
        elif isinstance(value, Mapping):
            _register_secrets(value)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple | set):
        return tuple(_freeze(v) for v in value)
    return value


class Router:
    """Composes the registry's risk checks and connectors; owns the connector cache.

    One router per process (or per test) is the intended use: it keeps one connector --
    one exchange client, one markets cache -- per (connector, testnet, config) and reuses
    it for every order. Call :meth:`aclose` at shutdown.

    :param registry: plugins to use; default discovers installed ones.
    :param limits: the seed's three limits at global scope, set in code (over the
        environment and the config file's ``[risk]`` table).
    :param connector_config: per-connector configuration passed to factories, e.g.
        ``{"binance": {"api_url": "http://127.0.0.1:8123"}}``, over the config file's
        ``[connectors.NAME]`` tables key by key; checked against the connector's
        :attr:`~bagbot_core.connector.Connector.config_keys` when it is built.
    :param allow_live: allow ``testnet=False``; default reads ``BAGBOT_ALLOW_LIVE``. Both
        the caller's ``testnet=False`` and this are needed before a live order is sent.
    :param reconcile_grace: how old an unresolved row must be before reconcile may
        declare an order the exchange does not know ``rejected``.
    :param skip_risk_checks: risk check names not to run, or ``"all"``; default reads
        ``BAGBOT_SKIP_RISK_CHECKS``. Every order routed meanwhile logs a
        ``risk_checks_bypassed`` warning and its row's ``details["risk_checks_skipped"]``
        lists them. ``"all"`` means every check loaded when the router is built.
    :param group_commit: on a SQLite file, let concurrent orders share the ``pending``
        row's disk flush (:mod:`bagbot_core.group_commit`); default reads
        ``BAGBOT_GROUP_COMMIT`` (on unless set false).
    :param risk_config: every risk limit per user, connector and symbol; default
        :meth:`RiskConfig.load() <bagbot_core.risk_config.RiskConfig.load>` (the config
        file, the seed's environment variables, the defaults).
    :raises ConfigurationError: ``skip_risk_checks`` names a check that does not exist; a
        bad config file or limit.
    """

    def __init__(
        self,
        registry: PluginRegistry | None = None,
        *,
        limits: RiskLimits | None = None,
        connector_config: Mapping[str, Mapping[str, Any]] | None = None,
        allow_live: bool | None = None,
        reconcile_grace: dt.timedelta = DEFAULT_RECONCILE_GRACE,
        skip_risk_checks: str | Iterable[str] | None = None,
        risk_config: RiskConfig | None = None,
        group_commit: bool | None = None,
    ) -> None:
        self.registry = registry if registry is not None else PluginRegistry()
        risk = risk_config if risk_config is not None else RiskConfig.load()
        if limits is not None:  # code: over the environment and the file's [risk] table
            risk = risk.with_overrides(attrs.asdict(limits))
        #: Every limit per user/connector/symbol with its source; replaceable as a whole.
        self.risk_config = risk
        requested = parse_skip_list(skip_risk_checks)
        #: The risk checks this router does not run (resolved, in the order the checks run).
        self.skipped_risk_checks: tuple[str, ...] = resolve_skipped(
            requested, [check.name for check in self.registry.risk_checks()]
        ) if requested else ()
        #: Per connector: the config file's ``[connectors.NAME]`` table (the file the risk
        #: config read), ``connector_config`` over it key by key.
        self.connector_config = merge_connector_config(read_connector_tables(risk.path),
                                                       connector_config)
        for config in self.connector_config.values():
            _register_secrets(config)
        self._allow_live = allow_live
        #: Whether a SQLite file's ``pending`` rows share their disk flush.
        self.group_commit = _group_commit.enabled() if group_commit is None else group_commit
        self.reconcile_grace = reconcile_grace
        self._connectors: dict[tuple[Any, ...], Connector] = {}
        self._connector_locks: dict[tuple[Any, ...], asyncio.Lock] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def limits(self) -> RiskLimits:
        """The seed's three limits at global scope (per scope: :attr:`risk_config`)."""
        return self.risk_config.seed_limits()

    @property
    def allow_live(self) -> bool:
        return live_allowed() if self._allow_live is None else self._allow_live

    # -- connectors ---------------------------------------------------------------------

    async def get_connector(
        self, name: str, *, testnet: bool = True, database_url: str | None = None
    ) -> Connector:
        """The cached connector for (name, testnet, config), created on first use.

        A new connector's declared endpoints are checked before it is cached or used
        (:mod:`bagbot_core.endpoints`): ``testnet=True`` must mean a sandbox or loopback host.

        :raises UnknownConnectorError: no plugin provides ``name``.
        :raises LiveTradingNotAllowedError: ``testnet=False`` without the live opt-in, or
            endpoints on a live host while ``testnet=True``; nothing was sent.
        :raises ConfigurationError: the connector's factory refused its configuration.
        """
        if not testnet and not self.allow_live:
            raise LiveTradingNotAllowedError(
                f"live trading on {name!r} needs testnet=False and {ENV_ALLOW_LIVE}=1 in the "
                "environment; nothing was sent"
            )
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # clients are bound to the loop that created them
            self._connectors.clear()
            self._connector_locks.clear()
            self._loop = loop
        config = self.connector_config.get(name, {})
        key = (name, testnet, _freeze(config), database_url)
        connector = self._connectors.get(key)
        if connector is not None:
            return connector
        lock = self._connector_locks.setdefault(key, asyncio.Lock())
        async with lock:
            connector = self._connectors.get(key)
            if connector is None:
                spec = self.registry.connector_spec(name)
                settings = ConnectorSettings(
                    testnet=testnet, config=config, database_url=database_url,
                    allow_live=self.allow_live,
                )
                try:
                    connector = spec.factory(settings)
                except BagbotError:
                    raise
                except Exception as exc:
                    raise ConfigurationError(
                        f"connector {name!r} could not be created: {type(exc).__name__}: "
                        f"{audit.redact_text(str(exc))}"
                    ) from exc
                if not connector.name:
                    connector.name = name
                try:
                    check_connector_config(  # unknown keys: only if its class declares
                        name, connector.config_keys, config,
                        allow_unknown="config_keys" not in vars(type(connector)))
                    live = connector.check_endpoints(testnet=testnet,
                                                     allow_live=settings.allow_live)
                except Exception as exc:
                    try:  # nothing was sent; release whatever the factory opened
                        await connector.close()
                    except Exception as close_error:
                        audit.get_logger().warning("connector_close_failed", connector=name,
                                                   error=close_error)
                    if isinstance(exc, BagbotError):
                        raise
                    raise ConfigurationError(
                        f"connector {name!r} could not declare its endpoints: "
                        f"{type(exc).__name__}: {audit.redact_text(str(exc))}"
                    ) from exc
                if live is None:
                    warn_undeclared(name)
                elif live:
                    connector.allow_live = True  # approved here: its lazy re-check agrees
                self._connectors[key] = connector
        return connector

    async def aclose(self) -> None:
        """Close every cached connector (exchange sessions, sockets)."""
        connectors, self._connectors = list(self._connectors.values()), {}
        for connector in connectors:
            try:
                await connector.close()
            except Exception as exc:
                audit.get_logger().warning("connector_close_failed", connector=connector.name,
                                           error=exc)

    # -- notifications ------------------------------------------------------------------

    def _notify(self, log: Any, hook: str, **kwargs: Any) -> None:
        for plugin, exc in self.registry.notify(hook, **kwargs):
            log.error("hook_failed", hook=hook, plugin=plugin, error=exc)

    def _implemented(self, hook: str) -> bool:
        """Does any plugin implement ``hook``? (Spares building an order view for nobody.)"""
        return bool(getattr(self.registry.pm.hook, hook).get_hookimpls())

    async def _status_changed(self, log: Any, order: Order, old: OrderStatus) -> None:
        new = OrderStatus(order.status)
        if new != old:
            log.info("status_changed", order_id=order.id, old=old.value, new=new.value)
            if self._implemented("bagbot_order_status_changed"):
                self._notify(log, "bagbot_order_status_changed", order=order.view(), old=old,
                             new=new)

    # -- routing ------------------------------------------------------------------------

    async def route_order(
        self,
        connector_name: str,
        order_payload: Mapping[str, Any],
        db: Any,
        user_id: str,
        testnet: bool = True,
        *,
        on_replay: Callable[[Order], object] | None = None,
    ) -> Order:
        """Validate, risk-check, persist and send one order; return its committed row.

        See the module docstring for the flow. ``db`` is a SQLAlchemy ``Session`` or
        ``AsyncSession``; the call commits it. Exactly one row is left per call (the
        exceptions: no valid ``user_id``, or the database itself failing).

        :param on_replay: called with the returned row when this call is a retry of its
            idempotency key (in any process) and wrote nothing.
        :raises OrderValidationError: bad payload / user id / reused idempotency key.
        :raises RiskCheckError: one or more checks refused; ``.violations`` lists them.
        :raises ExchangeRejectedError: the market or the exchange refused the order.
        :raises OrderStatusUnknownError: the order may be on the exchange; reconcile it.
        :raises LiveTradingNotAllowedError, UnknownConnectorError, ConfigurationError:
            nothing was sent.
        """
        runner = _Db(db)
        name_ok, testnet_ok = check_connector_name(connector_name), isinstance(testnet, bool)
        log = audit.get_logger(
            user_id=user_id if isinstance(user_id, str) else repr(user_id),
            connector=connector_name if name_ok else storable_connector_name(connector_name),
            testnet=testnet if testnet_ok else _shown(testnet))
        if not _valid_user_id(user_id):
            error = OrderValidationError(_USER_ID_RULE)
            log.warning("order_invalid", reason=str(error))
            self._notify(log, "bagbot_on_route_error", order=None, error=error)
            raise error
        extra: dict[str, Any] = {}
        if self.skipped_risk_checks:
            extra["risk_checks_skipped"] = list(self.skipped_risk_checks)
            log.warning("risk_checks_bypassed", checks=list(self.skipped_risk_checks),
                        setting=ENV_SKIP_RISK_CHECKS,
                        message="PRE-TRADE RISK CHECKS BYPASSED")
        early: OrderValidationError | None = None
        if not name_ok:
            # The row keeps an escaped, clipped copy: stored the same on every database.
            early = connector_name_error(connector_name)
            connector_name = storable_connector_name(connector_name)
        if not testnet_ok:
            # "false" is truthy: guessing could send a live order. The row says testnet
            # (the safe value) and keeps what was given.
            extra["testnet_given"] = _shown(testnet)
            early = early or OrderValidationError(
                f"testnet must be True or False, got {_shown(testnet)}")
            testnet = True

        payload_for_row = order_payload if isinstance(order_payload, Mapping) else {}
        log = log.bind(symbol=_clip(payload_for_row.get("symbol"), 64))
        log.info("order_received")
        try:
            if early is not None:
                raise early
            request = parse_order_payload(order_payload)
        except OrderValidationError as error:
            await self._reject_unparsed(runner, log, connector_name, user_id, testnet,
                                        payload_for_row, error, details=extra)
            raise

        if request.client_order_id is not None:
            existing = await runner.run(store.get_by_client_order_id, request.client_order_id)
            if existing is not None:
                return await self._idempotent_replay(runner, log, existing, connector_name,
                                                     user_id, request, testnet, on_replay)

        client_order_id = request.client_order_id or new_client_order_id()
        log = log.bind(client_order_id=client_order_id)
        row: dict[str, Any] = {
            "user_id": user_id, "connector": connector_name, "symbol": request.symbol,
            "side": request.side.value, "order_type": request.type.value,
            "qty": request.amount, "requested_qty": request.amount, "price": request.price,
            "testnet": testnet,
            "client_order_id": client_order_id,
        }
        if extra:  # the pending and the rejected row both record a bypass
            row["details"] = dict(extra)

        try:
            connector = await self.get_connector(
                connector_name, testnet=testnet, database_url=runner.url()
            )
            # Where the order really goes: a connector whose declared endpoints are all
            # sandbox/loopback is a testnet even when testnet=False was asked for.
            row["testnet"] = testnet if connector.live is None else not connector.live
            self._notify(log, "bagbot_before_route", connector=connector_name,
                         user_id=user_id, order=request)
            inputs = await self._prepare(connector, log, connector_name, user_id,
                                         row["testnet"], request)
            # A book in this very database: the order is placed in the row's transaction.
            shared = _shares_transaction(connector, runner)
            # Otherwise, on a SQLite file, the pending row's disk flush is shared.
            flusher = _flusher(runner) if self.group_commit and not shared else None
            # The atomic step: the user's lock, every check, the pending row, one commit.
            prepared, order = await self._checked_insert(runner, log, connector, inputs, row,
                                                         commit=not shared,
                                                         relaxed=flusher is not None)
        except store.ClientOrderIdTaken:
            # A concurrent call with the same idempotency key won the insert.
            existing = await runner.run(store.get_by_client_order_id, client_order_id)
            assert existing is not None
            return await self._idempotent_replay(runner, log, existing, connector_name,
                                                 user_id, request, testnet, on_replay)
        except _DatabaseFailed as failed:  # the database itself: as before, no row
            raise failed.error from None
        except (BagbotError, Exception) as error:
            bagbot_error = error if isinstance(error, BagbotError) else ExchangeUnavailableError(
                f"{connector_name}: {type(error).__name__}: {audit.redact_text(str(error))}"
            )
            return await self._reject_before_send(runner, log, row, bagbot_error, error)
        log = log.bind(order_id=order.id)
        if flusher is not None:  # nothing is sent before the row is on disk
            await self._flushed(runner, log, order, flusher)
        log.info("pending_written")
        if shared:
            return await self._submit_in_transaction(runner, log, connector, order, prepared,
                                                     row)
        return await self._submit(runner, log, connector, order, prepared)

    async def _flushed(self, runner: _Db, log: Any, order: Order,
                       flusher: _group_commit.Flusher) -> None:
        """Wait for a disk flush that covers the pending row's commit: shared with the
        process's concurrent orders (an ``AsyncSession``'s in other coroutines, a
        ``Session``'s in other threads).

        The flush failing (or the wait being cancelled) means nothing is sent: the row
        becomes ``rejected`` (if that write fails too, it stays ``pending`` and reconcile
        rejects it) and the failure is raised as the database's, an ``OperationalError``,
        as when SQLite's own flush fails inside a commit.
        """
        try:
            if runner.is_async:
                await flusher.wait_async()  # the flush runs in a worker thread
            else:  # like the session's own statements: blocks the caller (leads inline)
                flusher.wait()
            return
        except OSError as error:
            failure: BaseException = error
            reason = (f"the pending row could not be flushed to disk ({type(error).__name__}: "
                      f"{audit.redact_text(str(error))}); nothing was sent")
        except BaseException as error:  # cancelled while waiting
            failure, reason = error, "canceled before it was sent; nothing was sent"
        try:
            await asyncio.shield(runner.run(
                store.set_status, order, OrderStatus.REJECTED, reason=reason,
                details={"stage": "durability", "error": type(failure).__name__}))
        except Exception as persist_error:
            log.error("persist_failed", error=persist_error)
        else:
            await self._status_changed(log, order, OrderStatus.PENDING)
        log.error("rejected", stage="durability", reason=reason)
        if isinstance(failure, OSError):
            raise OperationalError("fsync of the pending row (group commit)", None,
                                   failure) from failure
        raise failure

    async def _prepare(
        self, connector: Connector, log: Any, connector_name: str, user_id: str,
        testnet: bool, request: OrderRequest,
    ) -> _Inputs:
        """Params, markets and the reference quote: everything fetched before the lock."""
        # Params first: an undeclared or forbidden one is refused before anything is asked,
        # checked or written pending (see bagbot_core.params).
        request = attrs.evolve(request, params=validate_params(
            request.params, connector.allowed_params, order_type=request.type,
            connector=connector_name))
        markets = await connector.load_markets()
        market = markets.get(request.symbol)
        quote: Quote | None = None
        if market is not None and market.active:
            # Every order type gets a quote (a price collar needs one for a limit order),
            # from the connector's cache within its staleness bound.
            try:
                quote = await connector.fetch_quote(request.symbol)
            except ExchangeError as exc:  # checks that need it then fail closed
                log.warning("quote_unavailable", error=exc)
            except Exception as exc:
                if request.type is OrderType.MARKET:
                    raise
                # A limit order is priced by its caller; only a check that needs the
                # quote (the collar) refuses it.
                log.warning("quote_unavailable", error=exc)
        return _Inputs(connector_name, user_id, testnet, request, markets, quote)

    async def _checked_insert(
        self, runner: _Db, log: Any, connector: Connector, inputs: _Inputs,
        row: dict[str, Any], *, commit: bool = True, relaxed: bool = False,
    ) -> tuple[OrderRequest, Order]:
        """The atomic per-user step: lock, every check, the ``pending`` row, commit.

        The transaction takes the user's lock (:mod:`bagbot_core.user_lock`) before any
        check reads ``ctx.history``, and commits the ``pending`` row before releasing it, so
        no other process can route for the same user in between: N processes together never
        exceed a limit. A refusal ends the transaction, which wrote nothing (the caller then
        writes the ``rejected`` row in a transaction of its own); a database failure rolls it
        back.

        :raises RiskCheckError, ExchangeRejectedError: refused; nothing was written.
        :raises store.ClientOrderIdTaken: a concurrent call with the same idempotency key.
        :raises _DatabaseFailed: the database failed taking the lock or writing the row.

        ``commit=False``: the ``pending`` row is written but not committed, and the lock is
        still held (:meth:`_submit_in_transaction` goes on in the same transaction).
        ``relaxed``: the transaction commits without waiting for the disk; the caller waits
        for a group flush (:mod:`bagbot_core.group_commit`) before sending anything.
        """
        try:
            try:
                await self._lock(runner, log, inputs.user_id, relaxed=relaxed)
            except Exception as error:
                raise _DatabaseFailed(error) from error
            # One instant for every check of the order, taken once the lock is held.
            history = History(runner.db, inputs.user_id, inputs.connector_name, inputs.testnet,
                              now=utcnow())
            try:
                prepared, notional = await self._check(connector, log, inputs, history)
            except Exception:
                await runner.release()  # refused: the step wrote nothing
                raise
            row.update(qty=prepared.amount, price=prepared.price, notional_usd=notional)
            try:
                order = await runner.run(store.insert_order, commit=commit,
                                         status=OrderStatus.PENDING.value, **row)
            except store.ClientOrderIdTaken:
                raise
            except Exception as error:
                raise _DatabaseFailed(error) from error
        except BaseException:
            if runner.db.in_transaction():  # a database failure, or a cancellation
                await runner.rollback()
            raise
        return prepared, order

    @staticmethod
    async def _lock(runner: _Db, log: Any, user_id: str, *, relaxed: bool) -> None:
        """Begin the atomic step's transaction holding the user's lock; nothing is written
        yet, so a dropped connection costs one more try (see :func:`_on_a_live_connection`).
        """
        async def attempt() -> None:
            if relaxed:
                await runner.run(_group_commit.begin_relaxed, lock_user, user_id)
            else:
                await runner.run(lock_user, user_id)

        await _on_a_live_connection(runner, log, "lock_retried", attempt)

    async def _check(
        self, connector: Connector, log: Any, inputs: _Inputs, history: History | None,
    ) -> tuple[OrderRequest, Decimal | None]:
        """Risk checks, market rounding, checks again; returns the order to send and the
        USD notional that was checked."""
        request, markets = inputs.request, inputs.markets
        market = markets.get(request.symbol)
        checks = self.registry.risk_checks()
        if self.skipped_risk_checks:  # announced per order by route_order
            checks = [c for c in checks if c.name not in self.skipped_risk_checks]
        context = RiskContext(order=request, connector=inputs.connector_name,
                              user_id=inputs.user_id, limits=self.limits, markets=markets,
                              quote=inputs.quote, testnet=inputs.testnet, history=history,
                              config=self.risk_config)
        violations = await run_checks(checks, context)
        self._log_risk(log, checks, violations)
        if violations:
            raise RiskCheckError(violations)
        if market is None:  # only reachable when valid_symbol is disabled
            raise ExchangeRejectedError(
                f"{request.symbol} is not a market on {inputs.connector_name}")
        prepared = connector.prepare_order(request, market, context.reference_price)
        if prepared != request:
            log.info("order_rounded", amount=decimal_text(prepared.amount),
                     price=decimal_text(prepared.price))
            context = attrs.evolve(context, order=prepared)
            again = await run_checks(checks, context)
            if again:
                self._log_risk(log, checks, again)
                raise RiskCheckError(again)
        return (attrs.evolve(prepared, reference_price=context.reference_price),
                context.notional_usd)

    @staticmethod
    def _log_risk(log: Any, checks: Any, violations: list[RiskViolation]) -> None:
        # One write and flush for the check's events, all on disk when this returns (before
        # the pending row, long before the send).
        with audit.batch():
            failed = {v.check: v for v in violations}
            for check in checks:
                violation = failed.get(check.name)
                if violation is None:
                    log.info("risk_check", check=check.name, passed=True)
                else:
                    log.warning("risk_check", check=check.name, passed=False,
                                reason=violation.reason, limit=violation.limit,
                                actual=violation.actual)
            for violation in violations:
                if violation.check not in {c.name for c in checks}:
                    log.warning("risk_check", check=violation.check, passed=False,
                                reason=violation.reason)

    async def _submit(
        self, runner: _Db, log: Any, connector: Connector, order: Order, request: OrderRequest
    ) -> Order:
        log.info("submitted")
        try:
            state = await connector.create_order(
                request, connector.exchange_client_id(order.client_order_id))
        except (ExchangeRejectedError, RateLimitedError) as error:
            # RateLimitedError: the exchange answered 429/418, or the connector refused to
            # send inside a Retry-After window. Either way nothing was placed.
            message = audit.redact_text(str(error))
            error.args = (message,)  # a connector's message may quote a signed request
            if isinstance(error, RateLimitedError):
                message = f"rate limited, nothing was placed: {message}"
            await runner.run(store.set_status, order, OrderStatus.REJECTED, reason=message)
            log.warning("rejected", stage="exchange", reason=message)
            await self._status_changed(log, order, OrderStatus.PENDING)
            self._fail(log, order, error)
        except BaseException as error:
            # Timeout, dropped connection, crash in the connector, cancellation: the
            # exchange may have the order. Record unknown, never rejected; never resend.
            reason = (f"no definite answer from the exchange ({type(error).__name__}: "
                      f"{audit.redact_text(str(error))}); reconcile will resolve it")
            await asyncio.shield(runner.run(store.set_status, order, OrderStatus.UNKNOWN,
                                            reason=reason))
            log.error("unknown", reason=reason)
            await self._status_changed(log, order, OrderStatus.PENDING)
            if not isinstance(error, Exception):
                raise  # cancellation / interpreter exit: the row is already unknown
            unknown = OrderStatusUnknownError(
                f"order {order.client_order_id} may have reached {order.connector}: {reason}; "
                "do not resend, run reconcile"
            )
            unknown.__cause__ = error
            self._fail(log, order, unknown)

        log.info("exchange_answered", status=state.status.value, external_id=state.external_id,
                 exchange_status=state.raw_status, filled=decimal_text(state.filled_qty))
        old = OrderStatus(order.status)
        try:
            # The pending row is already durable; this answer, if a power loss dropped
            # it, is fetched again by reconcile: one disk flush less per order.
            decision = await self._record_answer(runner, log, order, state,
                                                 connector.market_buy_tolerance)
        except Exception as error:
            # The exchange has the order but we could not record its answer: the row stays
            # pending and reconcile will fetch it.
            log.error("persist_failed", error=error)
            unknown = OrderStatusUnknownError(
                f"order {order.client_order_id} was accepted by {order.connector} as "
                f"{state.external_id} but its state could not be recorded; run reconcile"
            )
            unknown.__cause__ = error
            raise unknown from error
        return await self._answered(log, order, old, state, decision)

    @staticmethod
    async def _record_answer(runner: _Db, log: Any, order: Order, state: ExchangeOrder,
                             tolerance: Decimal) -> Any:
        """Record the exchange's answer (relaxed commit, see ``store.commit``). The order
        is on the exchange: a dropped connection must not leave it ``pending`` for
        reconcile, so it costs one more try (see :func:`_on_a_live_connection`)."""
        async def attempt() -> Any:
            return await runner.run(store.apply_exchange_state, order, state, durable=False,
                                    market_buy_tolerance=tolerance)

        return await _on_a_live_connection(runner, log, "answer_retried", attempt)

    async def _answered(self, log: Any, order: Order, old: OrderStatus, state: ExchangeOrder,
                        decision: Any) -> Order:
        """The exchange's answer is recorded: the events and hooks that follow, the error an
        inconsistent or rejecting answer raises."""
        log.info("persisted", status=order.status)
        await self._status_changed(log, order, old)
        if isinstance(decision, Inconsistent):
            # Recorded unknown: whatever the exchange did, this answer cannot say what.
            log.error("inconsistent_answer", reason=decision.reason,
                      answer=answer_summary(state))
            self._fail(log, order, OrderStatusUnknownError(
                f"order {order.client_order_id} may have reached {order.connector}, but its "
                f"answer does not add up ({decision.reason}); do not resend, run reconcile"))
        if order.status == OrderStatus.REJECTED:
            self._fail(log, order, ExchangeRejectedError(
                state.reason or f"{order.connector} rejected the order ({state.raw_status})"))
        if self._implemented("bagbot_after_route"):
            self._notify(log, "bagbot_after_route", order=order.view())
        return order

    async def _submit_in_transaction(
        self, runner: _Db, log: Any, connector: Connector, order: Order, request: OrderRequest,
        row: dict[str, Any],
    ) -> Order:
        """:meth:`_submit` for a connector whose book is in the router's own database (paper):
        the order is placed, and its answer recorded, in the transaction that holds the
        user's lock and the uncommitted ``pending`` row; one commit writes them all.

        The write-ahead ``pending`` row exists because a remote exchange may take an order
        that then goes unrecorded. Here the book and the row commit together or not at all:
        a crash before the commit leaves neither, after it both. The events are those of
        :meth:`_submit`, in the same order.

        A refusal of the book leaves the transaction usable: the row is committed
        ``rejected`` in it, as :meth:`_submit` records a refusal. Any other failure rolls
        back the book and the row together; nothing was placed, so the call's row is then
        written ``rejected`` with the error (see :meth:`_rolled_back`).
        """
        log.info("submitted")
        place = connector.create_order_in  # type: ignore[attr-defined]
        try:
            state: ExchangeOrder = await runner.run(
                place, request, connector.exchange_client_id(order.client_order_id))
        except ExchangeRejectedError as error:
            message = audit.redact_text(str(error))
            error.args = (message,)
            try:
                await runner.run(store.set_status, order, OrderStatus.REJECTED, reason=message)
            except BaseException as failure:
                await self._rolled_back(runner, log, order, row, failure)
            log.warning("rejected", stage="exchange", reason=message)
            await self._status_changed(log, order, OrderStatus.PENDING)
            self._fail(log, order, error)
        except BaseException as failure:
            await self._rolled_back(runner, log, order, row, failure)
        log.info("exchange_answered", status=state.status.value, external_id=state.external_id,
                 exchange_status=state.raw_status, filled=decimal_text(state.filled_qty))
        old = OrderStatus(order.status)
        try:
            # The one commit of the order: durable (the row, the book and the answer).
            decision = await runner.run(store.apply_exchange_state, order, state,
                                        market_buy_tolerance=connector.market_buy_tolerance)
        except BaseException as failure:
            await self._rolled_back(runner, log, order, row, failure)
        return await self._answered(log, order, old, state, decision)

    async def _rolled_back(self, runner: _Db, log: Any, pending: Order, row: dict[str, Any],
                           failure: BaseException) -> NoReturn:
        """The one transaction failed: roll back the book and the row, record the call's
        row ``rejected`` (nothing was placed), raise.

        The error raised is ``failure`` when it is bagbot's (or a cancellation), else an
        :class:`ExchangeUnavailableError` caused by it: nothing was placed, so a retry is
        safe. Should the commit have happened after all (a connection lost while it was
        acknowledged), the row is there: an :class:`OrderStatusUnknownError` says so.
        """
        if runner.db.in_transaction():
            await asyncio.shield(runner.rollback())
        if pending in runner.db:  # its row is gone (the id may be given again)
            runner.db.expunge(pending)
        text = f"{type(failure).__name__}: {audit.redact_text(str(failure))}"
        reason = (f"nothing was placed: the transaction placing the order on "
                  f"{row['connector']} failed and was rolled back ({text})")
        details = {**row.get("details", {}), "stage": "exchange", "rolled_back": True,
                   "error": type(failure).__name__}
        log.error("rolled_back", reason=reason)
        fields = {k: v for k, v in row.items() if k != "details"}
        try:
            order = await asyncio.shield(runner.run(
                store.insert_order, status=OrderStatus.REJECTED.value, reason=reason,
                details=details, **fields))
        except store.ClientOrderIdTaken:
            committed = await runner.run(store.get_by_client_order_id, row["client_order_id"])
            unknown = OrderStatusUnknownError(
                f"order {row['client_order_id']} was committed although the database reported "
                f"a failure ({text}); sync it to see its state")
            unknown.__cause__ = failure
            self._fail(log, committed, unknown)
        log.bind(order_id=order.id).warning("rejected", stage="exchange", reason=reason)
        if not isinstance(failure, Exception):
            raise failure  # cancellation / interpreter exit: the row is already written
        error = failure if isinstance(failure, BagbotError) else ExchangeUnavailableError(
            f"{row['connector']}: nothing was placed ({text}); safe to retry")
        if error is not failure:
            error.__cause__ = failure
        self._fail(log, order, error)

    def _fail(self, log: Any, order: Order | None, error: BagbotError) -> NoReturn:
        error.order = order
        self._notify(log, "bagbot_on_route_error", order=order.view() if order else None,
                     error=error)
        raise error

    async def _reject_before_send(
        self, runner: _Db, log: Any, row: dict[str, Any], error: BagbotError,
        original: BaseException,
    ) -> Order:
        details: dict[str, Any] = {**row.pop("details", {}), "stage": "pre-trade",
                                   "error": type(error).__name__}
        if isinstance(error, RiskCheckError):
            details["violations"] = [v.as_dict() for v in error.violations]
        reason = audit.redact_text(str(error))
        try:
            order = await runner.run(store.insert_order, status=OrderStatus.REJECTED.value,
                                     reason=reason, details=details, **row)
        except store.ClientOrderIdTaken:
            row["client_order_id"] = new_client_order_id()
            details["requested_client_order_id"] = row["client_order_id"]
            order = await runner.run(store.insert_order, status=OrderStatus.REJECTED.value,
                                     reason=reason, details=details, **row)
        log.bind(order_id=order.id).warning("rejected", stage="pre-trade", reason=reason,
                                            error=type(error).__name__)
        if error is not original:
            error.__cause__ = original
        self._fail(log, order, error)

    async def _reject_unparsed(
        self, runner: _Db, log: Any, connector_name: str, user_id: str, testnet: bool,
        payload: Mapping[str, Any], error: OrderValidationError,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        raw = {str(k)[:40]: audit.redact_text(repr(v))[:200] for k, v in list(payload.items())[:20]}
        order = await runner.run(
            store.insert_order,
            user_id=user_id, connector=connector_name[:64],
            symbol=_clip(payload.get("symbol"), 64), side=_clip(payload.get("side"), 16),
            order_type=_clip(payload.get("type"), 16), qty=Decimal(0), price=None,
            testnet=testnet, client_order_id=new_client_order_id(),
            status=OrderStatus.REJECTED.value, reason=str(error),
            details={**(details or {}), "stage": "validation", "error": type(error).__name__,
                     "payload": raw},
        )
        error.order = order
        log.bind(order_id=order.id, client_order_id=order.client_order_id).warning(
            "rejected", stage="validation", reason=str(error))
        self._notify(log, "bagbot_on_route_error", order=order.view(), error=error)

    async def _idempotent_replay(
        self, runner: _Db, log: Any, existing: Order, connector_name: str, user_id: str,
        request: OrderRequest, testnet: bool,
        on_replay: Callable[[Order], object] | None = None,
    ) -> Order:
        """Same idempotency key again: return the first order, never place a second.

        A row records where its order went, so ``testnet=False`` also matches a testnet row
        (the connector's endpoints were a sandbox or loopback host); a testnet request never
        matches a live row.
        """
        log = log.bind(client_order_id=existing.client_order_id, order_id=existing.id)
        if not self._same_order(existing, connector_name, user_id, request, testnet):
            error = self._key_taken(existing)
            log.warning("rejected", stage="idempotency", reason=str(error))
            self._notify(log, "bagbot_on_route_error", order=None, error=error)
            raise error
        log.info("idempotent_replay", status=existing.status)
        if existing.status == OrderStatus.REJECTED:
            self._fail(log, existing, ExchangeRejectedError(
                existing.reason or "order was rejected"))
        if on_replay is not None:
            on_replay(existing)
        return existing

    @staticmethod
    def _same_order(existing: Order, connector_name: str, user_id: str,
                    request: OrderRequest, testnet: bool) -> bool:
        return (
            existing.user_id == user_id and existing.connector == connector_name
            and existing.symbol == request.symbol and existing.side == request.side.value
            and existing.order_type == request.type.value
            and (existing.testnet or not testnet)
        )

    @staticmethod
    def _key_taken(existing: Order) -> IdempotencyKeyReusedError:
        return IdempotencyKeyReusedError(
            f"client_order_id {existing.client_order_id!r} is already used by order "
            f"{existing.id} with different parameters"
        )

    # -- dry run ------------------------------------------------------------------------

    async def check_order(
        self,
        connector_name: str,
        order_payload: Mapping[str, Any],
        db: Any,
        user_id: str,
        testnet: bool = True,
    ) -> list[RiskViolation]:
        """Dry run of :meth:`route_order`: validation and every risk check, nothing else.

        Stateful checks included: they read ``db`` under the user's lock, exactly as
        :meth:`route_order` would at this moment (the transaction then ends). No row is
        written, no hook is notified and nothing is sent. The checks run again after market
        rounding when it changes the order, as when routing. An idempotency key that already
        has a row is checked like a new order (routing it would replay that row).

        :return: every violation; empty when the order would pass the checks.
        :raises OrderValidationError: bad payload, user id, connector name, testnet flag or
            params, or an idempotency key used by a different order.
        :raises ExchangeRejectedError: the market refuses the order (rounding).
        :raises LiveTradingNotAllowedError, UnknownConnectorError, ConfigurationError,
            ExchangeError: as :meth:`route_order`, before any check ran.
        """
        runner = _Db(db)
        if not _valid_user_id(user_id):
            raise OrderValidationError(_USER_ID_RULE)
        if not check_connector_name(connector_name):
            raise connector_name_error(connector_name)
        if not isinstance(testnet, bool):
            raise OrderValidationError(f"testnet must be True or False, got {_shown(testnet)}")
        request = parse_order_payload(order_payload)
        log = audit.get_logger(user_id=user_id, connector=connector_name, testnet=testnet,
                               symbol=request.symbol, dry_run=True)
        if self.skipped_risk_checks:
            log.warning("risk_checks_bypassed", checks=list(self.skipped_risk_checks),
                        setting=ENV_SKIP_RISK_CHECKS,
                        message="PRE-TRADE RISK CHECKS BYPASSED")
        if request.client_order_id is not None:
            existing = await runner.run(store.get_by_client_order_id, request.client_order_id)
            if existing is not None and not self._same_order(
                    existing, connector_name, user_id, request, testnet):
                raise self._key_taken(existing)
        connector = await self.get_connector(connector_name, testnet=testnet,
                                             database_url=runner.url())
        where = testnet if connector.live is None else not connector.live
        inputs = await self._prepare(connector, log, connector_name, user_id, where, request)
        try:
            await runner.run(lock_user, user_id)
            history = History(runner.db, user_id, connector_name, where, now=utcnow())
            try:
                await self._check(connector, log, inputs, history)
                violations: list[RiskViolation] = []
            except RiskCheckError as error:
                violations = list(error.violations)
        finally:
            await runner.release()
        log.info("dry_run", passed=not violations,
                 violations=[v.check for v in violations])
        return violations

    # -- after routing ------------------------------------------------------------------

    async def _connector_for(self, runner: _Db, order: Order) -> Connector:
        return await self.get_connector(order.connector, testnet=order.testnet,
                                        database_url=runner.url())

    async def sync_order(self, db: Any, order: Order | int) -> Order:
        """Fetch ``order`` from its exchange and record its status and fills.

        The answer is merged monotonically (:mod:`bagbot_core.exchange_state`): an answer
        older than the row (less filled, an earlier status) changes nothing and is logged as
        ``stale_answer``.

        :raises ExchangeOrderNotFoundError: the exchange does not know it (row unchanged).
        :raises ExchangeUnavailableError: could not ask, or the answer does not add up
            (logged as ``inconsistent_answer``; row unchanged; safe to retry).
        """
        runner = _Db(db)
        if isinstance(order, int):
            order = await runner.run(store.get_order, order)
        log = self._order_log(order)
        connector = await self._connector_for(runner, order)
        state = await _ask(connector, connector.fetch_order(
            order.symbol, external_id=order.external_id,
            client_order_id=connector.exchange_client_id(order.client_order_id)))
        return await self._record(runner, log, order, state, "synced", connector)

    async def cancel_order(self, db: Any, order: Order | int) -> Order:
        """Cancel ``order`` on its exchange and record the result.

        An order that filled or was canceled on the exchange meanwhile cannot be canceled:
        exchanges say so differently (Binance answers "Unknown order sent.", a not-found;
        others refuse the cancel). Either way the row is left as it was; sync it to record
        what happened.

        :raises ExchangeRejectedError: the row is already terminal, or the exchange refused.
        :raises ExchangeOrderNotFoundError: the exchange no longer has it open.
        """
        runner = _Db(db)
        if isinstance(order, int):
            order = await runner.run(store.get_order, order)
        log = self._order_log(order)
        if OrderStatus(order.status).is_terminal:
            raise ExchangeRejectedError(
                f"order {order.id} is {order.status}: there is nothing to cancel"
            )
        connector = await self._connector_for(runner, order)
        log.info("cancel_requested")
        state = await _ask(connector, connector.cancel_order(
            order.symbol, external_id=order.external_id,
            client_order_id=connector.exchange_client_id(order.client_order_id)))
        return await self._record(runner, log, order, state, "canceled", connector)

    async def reconcile(
        self, db: Any, connector: str, *, grace: dt.timedelta | None = None
    ) -> list[Order]:
        """Resolve every ``pending``/``unknown`` row of ``connector`` by client order id.

        Found on the exchange: the row takes the exchange's status. Not found and older
        than ``grace``: ``rejected``, "never reached the exchange". Younger rows are left
        alone -- they may be in flight in another process.

        "Not found after the grace period" only means "never placed" because exchanges
        refuse a request that arrives late: Binance drops any request older than its
        ``recvWindow`` (10 s as bagbot sends it), Coinbase's JWT expires after 120 s. The
        default grace (the router's ``reconcile_grace``, 180 s) must stay longer than that
        window plus the client timeout; pass a smaller one only when no request can still
        be in flight (tests, a stopped fleet).

        :return: the rows that changed.
        """
        runner = _Db(db)
        horizon = utcnow() - (self.reconcile_grace if grace is None else grace)
        rows = await runner.run(store.pending_or_unknown, connector)
        changed: list[Order] = []
        for order in rows:
            log = self._order_log(order)
            conn = await self._connector_for(runner, order)
            try:
                state = await _ask(conn, conn.fetch_order(
                    order.symbol, external_id=order.external_id,
                    client_order_id=conn.exchange_client_id(order.client_order_id)))
            except ExchangeOrderNotFoundError:
                if order.created_at > horizon:
                    log.info("reconcile_deferred", reason="not on the exchange yet; too young")
                    continue
                old = await runner.run(
                    store.set_status, order, OrderStatus.REJECTED,
                    reason="never reached the exchange (not found by client order id during "
                           "reconcile)")
                log.warning("reconciled", status=order.status)
                await self._status_changed(log, order, old)
                changed.append(order)
                continue
            except ExchangeUnavailableError as exc:
                log.warning("reconcile_failed", error=exc)
                continue
            old = OrderStatus(order.status)
            try:
                await self._record(runner, log, order, state, "reconciled", conn)
            except ExchangeUnavailableError as exc:  # an answer that does not add up
                log.info("reconcile_deferred", reason=str(exc))
            if order.status != old:
                changed.append(order)
        return changed

    async def _record(
        self, runner: _Db, log: Any, order: Order, state: ExchangeOrder, event: str,
        connector: Connector | None = None,
    ) -> Order:
        """Merge the exchange's answer into ``order`` (see :mod:`bagbot_core.exchange_state`).

        A stale answer changes nothing (``stale_answer`` event).

        :raises ExchangeUnavailableError: the answer does not add up (``inconsistent_answer``
            event): the row keeps what it had -- a ``pending`` row becomes ``unknown`` -- and
            the next sync or reconcile asks again.
        """
        if connector is None:
            connector = await self._connector_for(runner, order)
        old = OrderStatus(order.status)
        decision = await runner.run(store.apply_exchange_state, order, state,
                                    market_buy_tolerance=connector.market_buy_tolerance)
        if isinstance(decision, Stale):
            log.warning("stale_answer", reason=decision.reason, status=order.status,
                        answer=answer_summary(state))
            return order
        if isinstance(decision, Inconsistent):
            log.warning("inconsistent_answer", reason=decision.reason, status=order.status,
                        answer=answer_summary(state))
            await self._status_changed(log, order, old)
            kept = "is now unknown" if order.status != old else "is unchanged"
            raise ExchangeUnavailableError(
                f"{order.connector}'s answer about order {order.id} does not add up "
                f"({decision.reason}); the row {kept}, ask again later")
        log.info(event, status=order.status, exchange_status=state.raw_status,
                 filled=decimal_text(order.filled_qty))
        await self._status_changed(log, order, old)
        return order

    @staticmethod
    def _order_log(order: Order) -> Any:
        return audit.get_logger(user_id=order.user_id, connector=order.connector,
                                symbol=order.symbol, client_order_id=order.client_order_id,
                                order_id=order.id, testnet=order.testnet)

    # -- trading state: the kill switch (bagbot_core.trading_state) ---------------------

    async def halt(self, db: Any, *, reason: str, who: str, user_id: str | None = None,
                   connector: str | None = None, cancel_open: bool = False) -> Any:
        """HALT the scope (both ``None``: everything): no new orders, cancels still work.

        With ``cancel_open``, then cancel the scope's open orders one by one; the returned
        :class:`~bagbot_core.trading_state.StateChange` lists each in ``canceled``, with the
        error of any cancel that failed (the others are still tried).

        :raises UnknownConnectorError: ``connector`` is not installed (nothing changed).
        :raises ConfigurationError: an invalid user id, an empty reason or who.
        """
        from bagbot_core.trading_state import CancelOutcome, TradingState, open_orders

        change = await self._set_trading_state(db, TradingState.HALTED, reason=reason,
                                               who=who, user_id=user_id, connector=connector)
        if not cancel_open:
            return change
        runner = _Db(db)
        outcomes = []
        for order in await runner.run(open_orders, user_id=user_id, connector=connector):
            try:
                outcomes.append(CancelOutcome(await self.cancel_order(db, order)))
            except Exception as error:  # one failed cancel must not stop the others
                outcomes.append(CancelOutcome(order, error))
        return attrs.evolve(change, canceled=tuple(outcomes))

    async def reduce(self, db: Any, *, reason: str, who: str, user_id: str | None = None,
                     connector: str | None = None) -> Any:
        """REDUCING for the scope: only orders that reduce the user's position pass."""
        from bagbot_core.trading_state import TradingState

        return await self._set_trading_state(db, TradingState.REDUCING, reason=reason,
                                             who=who, user_id=user_id, connector=connector)

    async def resume(self, db: Any, *, reason: str, who: str, user_id: str | None = None,
                     connector: str | None = None) -> Any:
        """ACTIVE for the scope (a broader scope's restriction still applies)."""
        from bagbot_core.trading_state import TradingState

        return await self._set_trading_state(db, TradingState.ACTIVE, reason=reason,
                                             who=who, user_id=user_id, connector=connector)

    async def _set_trading_state(self, db: Any, state: Any, *, connector: str | None,
                                 **kwargs: Any) -> Any:
        from bagbot_core.trading_state import set_trading_state

        if connector is not None:
            self.registry.connector_spec(connector)  # a typo must not halt nothing
        return await _Db(db).run(set_trading_state, state, connector=connector, **kwargs)


def _shares_transaction(connector: Connector, runner: _Db) -> bool:
    """Can ``connector`` place orders in the router's own transaction on ``runner``'s
    database? A private protocol between the router and the built-in paper exchange
    (``_shares_transaction(url)`` and ``create_order_in(session, order, client_order_id)``),
    not part of the connector contract: other connectors never have it."""
    shares = getattr(connector, "_shares_transaction", None)
    return shares is not None and bool(shares(runner.url()))


async def _ask(connector: Connector, call: Awaitable[T]) -> T:
    """Await a connector's read or cancel; anything outside bagbot's hierarchy becomes
    :class:`ExchangeUnavailableError` (safe to retry), as ``route_order`` does for creates.

    A connector bug must not escape ``sync``/``cancel``/``reconcile`` as a bare exception:
    callers (and reconcile's loop over rows) handle bagbot's errors, not a ``KeyError``.
    """
    try:
        return await call
    except BagbotError:
        raise
    except Exception as exc:
        raise ExchangeUnavailableError(
            f"{connector.name}: unexpected {type(exc).__name__} from the connector: "
            f"{audit.redact_text(str(exc))}"
        ) from exc


# -- the module-level API (a process-wide default router) --------------------------------

_default_router: Router | None = None


def get_router() -> Router:
    """The process-wide router behind the module-level functions, built on first use."""
    global _default_router
    if _default_router is None:
        _default_router = Router()
    return _default_router


def set_router(router: Router | None) -> None:
    """Replace (or with ``None`` drop) the process-wide router; tests and apps use this."""
    global _default_router
    _default_router = router


async def route_order(
    connector_name: str,
    order_payload: Mapping[str, Any],
    db: Any,
    user_id: str,
    testnet: bool = True,
) -> Order:
    """Route one order through the default router. See :meth:`Router.route_order`."""
    return await get_router().route_order(connector_name, order_payload, db, user_id, testnet)


async def check_order(
    connector_name: str,
    order_payload: Mapping[str, Any],
    db: Any,
    user_id: str,
    testnet: bool = True,
) -> list[RiskViolation]:
    """Dry-run one order through the default router. See :meth:`Router.check_order`."""
    return await get_router().check_order(connector_name, order_payload, db, user_id, testnet)


async def sync_order(db: Any, order: Order | int) -> Order:
    return await get_router().sync_order(db, order)


async def cancel_order(db: Any, order: Order | int) -> Order:
    return await get_router().cancel_order(db, order)


async def reconcile(db: Any, connector: str, *, grace: dt.timedelta | None = None) -> list[Order]:
    return await get_router().reconcile(db, connector, grace=grace)
