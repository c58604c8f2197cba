"""Prometheus metrics of ``bagbot serve``, gathered as a bagbot plugin.

Orders, risk refusals and route times come from the lifecycle hooks every plugin sees
(``bagbot_before_route`` starts a route's clock, ``bagbot_after_route`` /
``bagbot_on_route_error`` stop it and count its final status, ``bagbot_order_status_changed``
counts every transition, sync, cancel and reconcile included), so metrics need nothing the
router does not already promise plugins. The app calls the plain functions for what no hook
sees: :func:`observe_http` per request, :func:`set_unknown_orders` and
:func:`set_trading_state` from the reconciler, :func:`render` for ``GET /metrics``.

Exchange requests (``bagbot_exchange_request_seconds``, ``bagbot_exchange_errors_total``)
are timed around the connector's own ``create_order``, ``fetch_order`` and
``cancel_order`` calls: :func:`install` makes the registry's connector factories return
connectors whose three methods are timed (the same object, its class untouched, so the
router's endpoint and config checks see no difference). That is the one place that sees
every request, creates included, with its real duration. The alternatives were worse: the
router's ``_ask`` sees reads and cancels but not creates, and editing the router's hot path
competes with work on it; pairing ``submitted``/``exchange_answered`` audit events needs a
hook into the log pipeline and covers creates only; a new hookspec would grow the plugin
contract for one consumer. ``load_markets`` and ``fetch_quote`` are not timed: connectors
answer them from a cache, and a cache hit is not a request. An error is a request without
a definite answer (unavailable, rate limited, timeout, a connector bug); a refusal or "no
such order" is an answer, and only timed.

Labels never carry a user id or a token. A connector label is a connector the registry
provides, else ``other``: a rejected row keeps whatever connector name a caller sent, and
every distinct name would otherwise be a new series.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``bagbot serve --workers N`` sets it before the
workers start), prometheus_client keeps every value in files there and :func:`render`
merges every process's; the gauges report the value most recently set by any process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import attrs
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from bagbot_core.connector import Connector, ConnectorSpec
from bagbot_core.errors import (
    BagbotError,
    ExchangeOrderNotFoundError,
    ExchangeRejectedError,
    RiskCheckError,
)
from bagbot_core.markers import hookimpl

if TYPE_CHECKING:
    from bagbot_core.orders import OrderRequest
    from bagbot_core.plugins import PluginRegistry
    from bagbot_core.status import OrderStatus
    from bagbot_core.trading_state import ScopeState
    from bagbot_core.views import OrderView

#: The name the plugin is registered under.
PLUGIN_NAME = "metrics"
ENV_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
#: The connector calls timed as exchange requests.
OPERATIONS = ("create_order", "fetch_order", "cancel_order")
OTHER = "other"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_MAX_ROUTE = 120

REGISTRY = CollectorRegistry(auto_describe=True)

ORDERS = Counter("bagbot_orders", "Route calls by the final status of their row "
                 "(none: no row was written)", ["connector", "status"], registry=REGISTRY)
RISK_REFUSALS = Counter("bagbot_risk_refusals", "Risk-check violations that refused an order",
                        ["check"], registry=REGISTRY)
TRANSITIONS = Counter("bagbot_order_transitions", "Order status changes (routing, sync, "
                      "cancel, reconcile)", ["connector", "old", "new"], registry=REGISTRY)
ROUTE_SECONDS = Histogram("bagbot_route_seconds", "Route calls, from the validated order to "
                          "the recorded answer", ["connector"], registry=REGISTRY)
EXCHANGE_SECONDS = Histogram("bagbot_exchange_request_seconds", "Requests to an exchange",
                             ["connector", "operation"], registry=REGISTRY)
EXCHANGE_ERRORS = Counter("bagbot_exchange_errors", "Exchange requests without a definite "
                          "answer", ["connector", "operation"], registry=REGISTRY)
UNKNOWN_ORDERS = Gauge("bagbot_unknown_orders", "Rows awaiting reconcile: unknown, or pending "
                       "past the grace", registry=REGISTRY, multiprocess_mode="mostrecent")
TRADING_STATE = Gauge("bagbot_trading_state", "Kill switch per scope: 0 active, 1 reducing, "
                      "2 halted (user: the most restrictive of any user's)", ["scope"],
                      registry=REGISTRY, multiprocess_mode="mostrecent")
HTTP_REQUESTS = Counter("bagbot_http_requests", "HTTP requests", ["route", "method", "code"],
                        registry=REGISTRY)
HTTP_SECONDS = Histogram("bagbot_http_request_seconds", "HTTP requests, first byte in to "
                         "response", ["route", "method"], registry=REGISTRY)


@attrs.frozen
class _Started:
    at: float
    connector: str
    user_id: str
    symbol: str


#: The route in progress in this task (set by ``bagbot_before_route``).
_route: ContextVar[_Started | None] = ContextVar("bagbot_metrics_route", default=None)


class MetricsPlugin:
    """The hook implementations; registered by :func:`install`."""

    def __init__(self, registry: PluginRegistry) -> None:
        self._registry = registry

    def connector_label(self, name: object) -> str:
        """``name`` if the registry provides that connector, else :data:`OTHER`."""
        try:
            known = isinstance(name, str) and name in self._registry.connectors()
        except BagbotError:  # plugins that cannot load: routing reports that, not metrics
            known = False
        return name if known and isinstance(name, str) else OTHER

    @hookimpl
    def bagbot_before_route(self, connector: str, user_id: str, order: OrderRequest) -> None:
        _route.set(_Started(time.perf_counter(), connector, user_id, order.symbol))

    @hookimpl
    def bagbot_after_route(self, order: OrderView) -> None:
        self._finish(order, order.status.value)

    @hookimpl
    def bagbot_on_route_error(self, order: OrderView | None, error: BagbotError) -> None:
        if isinstance(error, RiskCheckError):
            for violation in error.violations:
                RISK_REFUSALS.labels(check=violation.check[:64]).inc()
        self._finish(order, "none" if order is None else order.status.value)

    @hookimpl
    def bagbot_order_status_changed(self, order: OrderView, old: OrderStatus,
                                    new: OrderStatus) -> None:
        TRANSITIONS.labels(connector=self.connector_label(order.connector), old=old.value,
                           new=new.value).inc()

    def _finish(self, order: OrderView | None, status: str) -> None:
        connector = self.connector_label(None if order is None else order.connector)
        ORDERS.labels(connector=connector, status=status).inc()
        started, now = _route.get(), time.perf_counter()
        _route.set(None)
        # Only the route this task started: one that failed before its clock started
        # (bad payload, unknown connector) has no time worth a sample.
        if (started is not None and order is not None and order.connector == started.connector
                and order.user_id == started.user_id and order.symbol == started.symbol):
            ROUTE_SECONDS.labels(connector=connector).observe(now - started.at)


# -- exchange requests ------------------------------------------------------------------------


def _definite(error: BaseException) -> bool:
    return isinstance(error, ExchangeRejectedError | ExchangeOrderNotFoundError)


def _timed(plugin: MetricsPlugin, connector: Connector, operation: str,
           call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await call(*args, **kwargs)
        except BaseException as error:
            if not _definite(error):
                EXCHANGE_ERRORS.labels(connector=plugin.connector_label(connector.name),
                                       operation=operation).inc()
            raise
        finally:
            EXCHANGE_SECONDS.labels(connector=plugin.connector_label(connector.name),
                                    operation=operation).observe(time.perf_counter() - started)

    return timed


def _measured(plugin: MetricsPlugin, factory: Callable[..., Connector]
              ) -> Callable[..., Connector]:
    def make(settings: Any) -> Connector:
        connector = factory(settings)
        for operation in OPERATIONS:
            # An instance attribute over the class's method: same object, same type.
            setattr(connector, operation,
                    _timed(plugin, connector, operation, getattr(connector, operation)))
        return connector

    return make


def install(registry: PluginRegistry) -> MetricsPlugin:
    """Register the metrics plugin into ``registry`` and time the exchange requests of the
    connectors it creates from now on. Idempotent.

    The plugin goes to pluggy directly, not through :meth:`PluginRegistry.register`: it is
    the service's instrumentation, not a plugin anyone installed, so ``GET /v1/plugins``
    stays the list ``bagbot plugins`` prints.
    """
    existing = registry.pm.get_plugin(PLUGIN_NAME)
    if isinstance(existing, MetricsPlugin):
        return existing
    plugin = MetricsPlugin(registry)
    registry.pm.register(plugin, name=PLUGIN_NAME)
    registry.pm.check_pending()
    plain = registry.connector_spec
    specs: dict[int, tuple[ConnectorSpec, ConnectorSpec]] = {}

    def connector_spec(name: str) -> ConnectorSpec:
        spec = plain(name)
        cached = specs.get(id(spec))
        if cached is None or cached[0] is not spec:
            cached = specs[id(spec)] = (spec, attrs.evolve(
                spec, factory=_measured(plugin, spec.factory)))
        return cached[1]

    setattr(registry, "connector_spec", connector_spec)  # noqa: B010 - this instance only
    return plugin


# -- what the app reports ---------------------------------------------------------------------


def observe_http(route: str, method: str, code: int, seconds: float) -> None:
    """One HTTP request. ``route`` is the route's template (``/v1/orders/{order_id}``),
    never the path: ids in paths would make a series per order."""
    route = route if isinstance(route, str) and len(route) <= _MAX_ROUTE else OTHER
    method = method.upper() if method.upper() in _METHODS else OTHER
    HTTP_REQUESTS.labels(route=route, method=method, code=str(int(code))).inc()
    HTTP_SECONDS.labels(route=route, method=method).observe(max(seconds, 0.0))


def set_unknown_orders(count: int) -> None:
    """Rows awaiting reconcile (``unknown``, or ``pending`` past the grace)."""
    UNKNOWN_ORDERS.set(count)


def set_trading_state(states: Iterable[ScopeState]) -> None:
    """Every scope's state, as :func:`bagbot_core.trading_state.scope_states` reads them.

    ``global`` and each ``connector:NAME`` get their own value; user scopes, whose ids stay
    out of labels, are summed up as ``user``: the most restrictive state any user has.
    """
    values = {"global": 0, "user": 0}
    for state in states:
        scope = state.scope
        if scope.user_id is not None:
            values["user"] = max(values["user"], state.state.rank)
        elif scope.connector is not None:
            values[f"connector:{scope.connector}"] = state.state.rank
        else:
            values["global"] = state.state.rank
    for scope_label, value in values.items():
        TRADING_STATE.labels(scope=scope_label).set(value)


def multiprocess_dir() -> str | None:
    """The directory every process writes its values to, when several serve together."""
    return os.environ.get(ENV_MULTIPROC_DIR) or None


def render() -> tuple[bytes, str]:
    """The exposition text of every metric (merged over processes in multiprocess mode),
    and its content type."""
    if multiprocess_dir() is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
    return generate_latest(merged), CONTENT_TYPE_LATEST
