"""The FastAPI application: :func:`create_app` (in code, tests) and :func:`app_factory`
(``uvicorn --factory``, one per worker process, configured by the environment).

One router per process, built at start-up with the plugins loaded (and the metrics plugin,
:mod:`.metrics`), one async engine, and the background reconciler (:mod:`.reconciler`);
every request gets its own ``AsyncSession``. Shutdown (uvicorn stops accepting first): the
requests in flight get up to ``BAGBOT_SERVICE_SHUTDOWN_GRACE`` seconds to finish, the rest
are cancelled -- an order whose request is cancelled while it is with the exchange is
recorded ``unknown`` by the router, never left ``pending`` -- then the connectors are
closed and the engine disposed.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import AsyncIterator

from fastapi import FastAPI

from bagbot_core import audit
from bagbot_core.db import database_url as resolve_database_url
from bagbot_core.db import get_async_engine, get_engine, sync_url
from bagbot_core.router import Router
from bagbot_core.service import (
    dashboard,
    errors,
    logs,
    metrics,
    routes_admin,
    routes_info,
    routes_orders,
)
from bagbot_core.service.auth import RateLimiter
from bagbot_core.service.config import ServiceSettings
from bagbot_core.service.middleware import RequestGuard, RequestMetrics
from bagbot_core.service.reconciler import Reconciler
from bagbot_core.service.runtime import InFlight, Runtime

#: Seconds cancelled requests get to record what they were doing (``unknown`` rows).
CANCEL_WAIT = 10.0


def create_app(settings: ServiceSettings | None = None, *, database_url: str | None = None,
               router: Router | None = None) -> FastAPI:
    """The service as an ASGI app; nothing is opened until its lifespan starts.

    :param settings: default :meth:`ServiceSettings.from_env`.
    :param database_url: default ``BAGBOT_DATABASE_URL`` (then the default SQLite file).
    :param router: default a new :class:`Router` configured by the environment and the
        config file (built at start-up); closed at shutdown either way.
    """
    chosen = settings if settings is not None else ServiceSettings.from_env()
    url = database_url
    inflight = InFlight()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        audit.configure()
        logs.install()
        resolved = resolve_database_url(url)
        service_router = router if router is not None else Router()
        engine = get_async_engine(resolved)
        service = Runtime(chosen, sync_url(resolved), service_router, engine,
                          RateLimiter(chosen.rate_limit, chosen.burst), inflight)
        app.state.bagbot = service
        reconciler = Reconciler(service_router, engine, interval=chosen.reconcile_interval)
        try:
            metrics.install(service_router.registry)
            plugins = service_router.registry.plugin_infos()  # load them now, not at 1st order
            reconciler.start()
            service.ready = True
            audit.get_logger().info("service_started", plugins=len(plugins))
            yield
        finally:
            service.ready = False
            await _drain(service)
            await reconciler.stop(wait=CANCEL_WAIT)
            await service_router.aclose()
            await service.tokens.aclose(wait=CANCEL_WAIT)  # last_used_at writes, read pools
            await engine.dispose()
            get_engine(service.url).dispose()  # the last_used_at writes' pool
            audit.get_logger().info("service_stopped")

    # No /docs or /redoc (their pages load scripts from a CDN; /openapi.json is served),
    # and no redirect from "/v1/orders/" to "/v1/orders": a client gets 404 in the error
    # shape rather than a redirect its POST might not follow.
    app = FastAPI(title="bagbot", summary="Plugin-based crypto order routing over HTTP",
                  version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  redirect_slashes=False)
    errors.install(app)
    app.add_middleware(RequestGuard, max_body=chosen.max_body, timeout=chosen.timeout,
                       inflight=inflight)
    app.add_middleware(RequestMetrics, observe=metrics.observe_http,  # outermost: sees all
                       unmatched=metrics.OTHER)
    app.include_router(routes_orders.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_info.router)
    dashboard.install(app)
    return app


def app_factory() -> FastAPI:
    """The app for ``uvicorn --factory bagbot_core.service.app:app_factory``: settings,
    database and router from the environment (``bagbot serve`` sets it for its workers)."""
    return create_app()


async def _drain(service: Runtime) -> None:
    """Let requests in flight finish (up to the grace), then cancel the rest and give them
    a moment to record their rows."""
    inflight = service.inflight
    if await inflight.wait(service.settings.shutdown_grace):
        return
    cancelled = inflight.cancel()
    audit.get_logger().warning("shutdown_cancelled_requests", requests=cancelled,
                               grace_seconds=service.settings.shutdown_grace)
    await inflight.wait(CANCEL_WAIT)


def _version() -> str:
    try:
        return importlib.metadata.version("bagbot-core")
    except importlib.metadata.PackageNotFoundError:  # a source tree
        return "0"
