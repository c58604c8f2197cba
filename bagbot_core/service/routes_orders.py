"""``/v1/orders``: route, dry-run, list, show, cancel and sync orders.

A user token sees only its user's orders: another user's order id answers 404, exactly as an
id that does not exist (a 403 would confirm that it does). Admin tokens see every user's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import warnings
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query
from sqlalchemy.ext.asyncio import AsyncSession

from bagbot_core import store
from bagbot_core.errors import BagbotError, LiveTradingNotAllowedError, OrderNotFoundError
from bagbot_core.models import Order
from bagbot_core.payload import CLIENT_ORDER_ID_RE
from bagbot_core.service.auth import Identity, ServiceRuntime
from bagbot_core.service.errors import ApiError, BagbotJSONResponse
from bagbot_core.service.runtime import session
from bagbot_core.service.schemas import CheckOut, ErrorOut, OrderIn, OrderListOut, OrderOut
from bagbot_core.status import OrderStatus
from bagbot_core.tokens import TokenIdentity

router = APIRouter(prefix="/v1", tags=["orders"])

# Pydantic (2.12+) warns that the header's alias "has no effect" when FastAPI builds a
# validator for it; FastAPI reads the header by that alias all the same (the idempotency
# tests send it). Only that false alarm is silenced.
warnings.filterwarnings("ignore", message="The 'alias' attribute with value 'Idempotency-Key'")

Db = Annotated[AsyncSession, Depends(session)]
#: Printable ASCII, 1-64 characters.
IDEMPOTENCY_KEY_PATTERN = r"^[\x20-\x7e]{1,64}$"
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", pattern=IDEMPOTENCY_KEY_PATTERN,
    description="Your key for this order (1-64 printable ASCII characters): a retry with "
                "the same key and order returns the first order instead of placing another.")]
#: Text a filter may hold: no control characters (no driver takes NUL).
FILTER_PATTERN = r"^[^\x00-\x1f\x7f]{1,128}$"
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut}
    for status in (400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503)}
ROUTE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS, 202: {"model": ErrorOut, "description": "the order's status is unknown: do "
                                                     "not resend, reconcile"},
    200: {"model": OrderOut, "description": "a retry of an Idempotency-Key: the first order"}}
MAX_OFFSET = 10**9


def client_order_id_for(key: str) -> str:
    """The client order id an ``Idempotency-Key`` becomes: the key itself when an exchange
    would take it (``[A-Za-z0-9_-]{1,36}``), else ``ik`` and 34 hex digits of its SHA-256
    (the same key always gives the same id)."""
    if CLIENT_ORDER_ID_RE.fullmatch(key):
        return key
    return "ik" + hashlib.sha256(key.encode("ascii")).hexdigest()[:34]


def order_out(order: Order, status: int = 200) -> BagbotJSONResponse:
    return BagbotJSONResponse(order.view().as_dict(), status_code=status)


def _check_live(identity: TokenIdentity, body: OrderIn) -> None:
    if not body.testnet and not identity.live:
        raise LiveTradingNotAllowedError(
            "this token may not trade live (create one with bagbot tokens create --live); "
            "nothing was sent")


async def _owned(db: AsyncSession, identity: TokenIdentity, order_id: int) -> Order:
    order = await db.run_sync(store.get_order, order_id)
    if not identity.admin and order.user_id != identity.user_id:
        raise OrderNotFoundError(f"no order with id {order_id}")  # as if it did not exist
    return order


@router.post("/orders", status_code=201, response_model=OrderOut, responses=ROUTE_ERRORS,
             summary="Route one order")
async def create_order(body: OrderIn, identity: Identity, service: ServiceRuntime, db: Db,
                       idempotency_key: IdempotencyKey = None) -> BagbotJSONResponse:
    """Validate, risk-check, record and send one order for the token's user: 201 with the
    row; 200 with the first row for a retry of the same ``Idempotency-Key``.

    Which of concurrent retries created the row is the router's to say (``on_replay``): a
    lookup made here first would race with another process's insert and answer 201 twice.
    """
    _check_live(identity, body)
    payload = body.payload()
    if idempotency_key is None:
        order = await service.router.route_order(body.connector, payload, db,
                                                 identity.user_id, body.testnet)
        return order_out(order, 201)
    payload["client_order_id"] = key = client_order_id_for(idempotency_key)
    replayed: list[Order] = []
    async with service.keys.hold(key):
        order = await service.router.route_order(body.connector, payload, db,
                                                 identity.user_id, body.testnet,
                                                 on_replay=replayed.append)
    return order_out(order, 200 if replayed else 201)


@router.post("/orders/check", response_model=CheckOut, responses=ERRORS,
             summary="Dry-run one order through every check")
async def check_order(body: OrderIn, identity: Identity, service: ServiceRuntime, db: Db,
                      idempotency_key: IdempotencyKey = None) -> dict[str, Any]:
    """Every validation and risk check, as routing would run them now; writes no row and
    sends nothing."""
    _check_live(identity, body)
    payload = body.payload()
    if idempotency_key is not None:
        payload["client_order_id"] = client_order_id_for(idempotency_key)
    violations = await service.router.check_order(body.connector, payload, db,
                                                  identity.user_id, body.testnet)
    return {"ok": not violations, "violations": [v.as_dict() for v in violations]}


@router.get("/orders", response_model=OrderListOut, responses=ERRORS, summary="List orders")
async def list_orders(
    identity: Identity, db: Db,
    symbol: Annotated[str | None, Query(pattern=FILTER_PATTERN)] = None,
    status: Annotated[list[OrderStatus] | None, Query()] = None,
    connector: Annotated[str | None, Query(pattern=FILTER_PATTERN)] = None,
    since: Annotated[dt.datetime | None, Query(description="inclusive")] = None,
    until: Annotated[dt.datetime | None, Query(description="exclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=store.MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    user: Annotated[str | None, Query(pattern=FILTER_PATTERN,
                                      description="admin tokens only")] = None,
) -> BagbotJSONResponse:
    """Orders newest first; a user token sees its own, an admin token everyone's (or
    ``user``'s)."""
    if user is not None and not identity.admin:
        raise ApiError(403, "only an admin token may list another user's orders")
    owner = user if identity.admin else identity.user_id

    def query(sync_db: Any) -> list[Order]:
        return store.list_orders(sync_db, user_id=owner, symbol=symbol, status=status,
                                 connector=connector, since=utc_bound(since),
                                 until=utc_bound(until), limit=limit, offset=offset)

    orders = await db.run_sync(query)
    following = offset + len(orders) if len(orders) == limit else None
    return BagbotJSONResponse({"orders": [o.view().as_dict() for o in orders], "limit": limit,
                               "offset": offset, "next_offset": following})


OrderId = Annotated[int, Path(ge=1, le=2**63 - 1)]


@router.get("/orders/{order_id}", response_model=OrderOut, responses=ERRORS,
            summary="Show one order")
async def get_order(order_id: OrderId, identity: Identity, db: Db) -> BagbotJSONResponse:
    return order_out(await _owned(db, identity, order_id))


@router.post("/orders/{order_id}/cancel", response_model=OrderOut, responses=ERRORS,
             summary="Cancel an open order")
async def cancel_order(order_id: OrderId, identity: Identity, service: ServiceRuntime,
                       db: Db) -> BagbotJSONResponse:
    order = await _owned(db, identity, order_id)
    with _about(order):
        return order_out(await service.router.cancel_order(db, order))


@router.post("/orders/{order_id}/sync", response_model=OrderOut, responses=ERRORS,
             summary="Fetch an order's state from its exchange")
async def sync_order(order_id: OrderId, identity: Identity, service: ServiceRuntime,
                     db: Db) -> BagbotJSONResponse:
    order = await _owned(db, identity, order_id)
    with _about(order):
        return order_out(await service.router.sync_order(db, order))


@contextlib.contextmanager
def _about(order: Order) -> Iterator[None]:
    """A refused cancel or sync answers with the row as it now is (the router leaves
    ``error.order`` unset there)."""
    try:
        yield
    except BagbotError as error:
        if getattr(error, "order", None) is None:
            error.order = order
        raise


def utc_bound(value: dt.datetime | None) -> dt.datetime | None:
    """A ``since``/``until`` bound in UTC (naive: read as UTC).

    A valid time that UTC cannot hold (the first or the last hours of the calendar in a far
    zone, ``0001-01-01T00:30+01:00``) becomes the nearest one it can: converting it would
    overflow (a 500), and as a bound it selects the same rows."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        end = dt.datetime.min if value.year == dt.MINYEAR else dt.datetime.max
        return end.replace(tzinfo=dt.UTC)
