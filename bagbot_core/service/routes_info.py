"""Read-only routes: who am I, plugins, risk limits and trading states; health probes and
Prometheus metrics (no token: probes and scrapers have none; neither shows a user id)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import text

from bagbot_core.risk_config import risk_report
from bagbot_core.service import metrics
from bagbot_core.service.auth import Identity, ServiceRuntime
from bagbot_core.service.errors import ApiError, BagbotJSONResponse, error_response
from bagbot_core.service.routes_orders import ERRORS, FILTER_PATTERN, Db
from bagbot_core.service.runtime import runtime
from bagbot_core.service.schemas import ErrorOut, IdentityOut
from bagbot_core.trading_state import ScopeState, most_restrictive, scope_states

router = APIRouter(tags=["info"])


@router.get("/v1/me", response_model=IdentityOut, responses=ERRORS,
            summary="The token's identity")
async def me(identity: Identity) -> dict[str, Any]:
    expires = identity.expires_at
    return {"token_id": identity.token_id, "user_id": identity.user_id,
            "admin": identity.admin, "live": identity.live,
            "expires_at": None if expires is None else expires.isoformat()}


@router.get("/v1/plugins", responses=ERRORS, summary="Loaded plugins")
async def plugins(_identity: Identity, service: ServiceRuntime) -> list[dict[str, Any]]:
    """The list ``bagbot plugins --json`` prints."""
    return [info.as_dict() for info in service.router.registry.plugin_infos()]


def trading_state_report(states: list[ScopeState], user_id: str | None) -> dict[str, Any]:
    """``scopes``: every set scope that covers ``user_id`` (all of them for ``None``);
    ``state`` and ``source``: what applies to every one of the user's orders, whatever the
    connector (the most restrictive of the scopes without a connector)."""
    if user_id is not None:
        states = [s for s in states if s.scope.user_id in (None, user_id)]
    effective = most_restrictive(
        s for s in states if s.scope.connector is None
        and (s.scope.user_id is None or user_id is not None))
    return {"state": effective.state.value,
            "source": None if effective.source is None else effective.source.as_dict(),
            "scopes": [s.as_dict() for s in states]}


@router.get("/v1/risk", responses=ERRORS, summary="Risk limits and trading states")
async def risk(
    identity: Identity, service: ServiceRuntime, db: Db,
    user: Annotated[str | None, Query(pattern=FILTER_PATTERN,
                                      description="admin tokens only")] = None,
) -> BagbotJSONResponse:
    """``limits`` is what ``bagbot risk show --json`` prints, as the router applies them."""
    if user is not None and not identity.admin:
        raise ApiError(403, "only an admin token may look at another user's limits")
    who = user if identity.admin else identity.user_id
    router_ = service.router
    limits = risk_report(router_.risk_config, router_.registry, user_id=who,
                         skipped=router_.skipped_risk_checks)
    states = await db.run_sync(scope_states)
    return BagbotJSONResponse({"user": who, "limits": limits,
                               "trading_state": trading_state_report(states, who)})


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorOut}},
            summary="Readiness: plugins loaded and the database answers")
async def readyz(request: Request) -> Any:
    service = runtime(request)
    if not service.ready:
        return error_response(503, "NotReady", "plugins are not loaded yet")
    try:
        async with service.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:
        return error_response(503, "NotReady", "the database does not answer",
                              headers={"Retry-After": "1"})
    return {"status": "ready"}


@router.get("/metrics", include_in_schema=False)
async def prometheus() -> Response:
    """Prometheus text (every worker's, merged, when several serve together)."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
