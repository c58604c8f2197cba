"""Admin routes: reconcile a connector, and the kill switch (halt, reduce, resume).

Every change is recorded as made by ``token:<token id>``: the public id, never the token.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from fastapi import APIRouter

from bagbot_core.audit import redact_text
from bagbot_core.errors import ConfigurationError
from bagbot_core.service.auth import Admin, ServiceRuntime
from bagbot_core.service.errors import ApiError, BagbotJSONResponse
from bagbot_core.service.routes_orders import ERRORS, Db
from bagbot_core.service.schemas import HaltIn, ReconcileIn, ReconcileOut, StateChangeIn
from bagbot_core.trading_state import check_change

router = APIRouter(prefix="/v1", tags=["admin"])
#: A year: older unresolved orders are past any exchange's memory anyway.
MAX_GRACE_SECONDS = 365 * 24 * 3600


def _who(identity: Any) -> str:
    return f"token:{identity.token_id}"


@router.post("/reconcile", response_model=ReconcileOut, responses=ERRORS,
             summary="Resolve a connector's pending and unknown orders")
async def reconcile(body: ReconcileIn, identity: Admin, service: ServiceRuntime,
                    db: Db) -> BagbotJSONResponse:
    """Ask the exchange about every ``pending``/``unknown`` row of the connector; returns
    the rows that changed."""
    grace = None
    if body.grace_seconds is not None:
        seconds = Decimal(body.grace_seconds)
        if seconds > MAX_GRACE_SECONDS:
            raise ApiError(422, f"grace_seconds must be at most {MAX_GRACE_SECONDS}",
                           type_="ValidationError")
        grace = dt.timedelta(seconds=float(seconds))
    service.router.registry.connector_spec(body.connector)  # unknown: 422, even when idle
    changed = await service.router.reconcile(db, body.connector, grace=grace)
    return BagbotJSONResponse({"orders": [o.view().as_dict() for o in changed]})


async def _change(service: Any, db: Any, identity: Any, state: str, body: StateChangeIn,
                  cancel_open: bool = False) -> dict[str, Any]:
    try:
        check_change(user_id=body.user, connector=body.connector, reason=body.reason,
                     who=_who(identity))
    except ConfigurationError as exc:  # the request's fault, not the server's
        raise ApiError(422, str(exc), type_="ValidationError") from None
    scope = {"user_id": body.user, "connector": body.connector, "reason": body.reason,
             "who": _who(identity)}
    if state == "halted":
        change = await service.router.halt(db, cancel_open=cancel_open, **scope)
    elif state == "reducing":
        change = await service.router.reduce(db, **scope)
    else:
        change = await service.router.resume(db, **scope)
    data: dict[str, Any] = change.as_dict()
    if cancel_open:
        data["canceled"] = [
            {"order": o.order.view().as_dict(),
             "error": None if o.error is None
             else redact_text(f"{type(o.error).__name__}: {o.error}")}
            for o in change.canceled]
    return data


@router.post("/halt", responses=ERRORS, summary="Stop new orders (kill switch)")
async def halt(body: HaltIn, identity: Admin, service: ServiceRuntime,
               db: Db) -> dict[str, Any]:
    """HALT the scope (both ``user`` and ``connector`` null: everything); with
    ``cancel_open``, then cancel its open orders, each reported in ``canceled``."""
    return await _change(service, db, identity, "halted", body, body.cancel_open)


@router.post("/reduce", responses=ERRORS, summary="Allow only position-reducing orders")
async def reduce(body: StateChangeIn, identity: Admin, service: ServiceRuntime,
                 db: Db) -> dict[str, Any]:
    return await _change(service, db, identity, "reducing", body)


@router.post("/resume", responses=ERRORS, summary="Set the scope back to active")
async def resume(body: StateChangeIn, identity: Admin, service: ServiceRuntime,
                 db: Db) -> dict[str, Any]:
    return await _change(service, db, identity, "active", body)
