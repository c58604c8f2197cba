"""One error body for every failure, and the HTTP status of each bagbot error.

Every non-2xx answer -- bagbot's errors, FastAPI's validation errors, unknown routes, 405,
413, 429, 401 -- is ``{"type", "message", "details", "order"}``: a client handles one shape.
Messages pass :func:`bagbot_core.audit.redact_text`, so a credential that reached one never
reaches the client; nothing here echoes a request's headers, path or body.

Why 422 and not 409 for a refused order: the request is refused on its own merits (a
malformed field, a risk limit, the exchange's "no"), not because it conflicts with the
state of a resource. 409 is kept for the one real conflict: an idempotency key that already
names a different order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from bagbot_core import audit
from bagbot_core.errors import (
    BagbotError,
    ConfigurationError,
    ExchangeError,
    ExchangeOrderNotFoundError,
    ExchangeRejectedError,
    ExchangeUnavailableError,
    IdempotencyKeyReusedError,
    IllegalTransitionError,
    LiveTradingNotAllowedError,
    OrderNotFoundError,
    OrderStatusUnknownError,
    OrderValidationError,
    PluginError,
    RateLimitedError,
    RiskCheckError,
    UnknownConnectorError,
)

#: Most specific first: the first class an error is an instance of decides its status.
STATUS_MAP: Sequence[tuple[type[BagbotError], int]] = (
    (IdempotencyKeyReusedError, 409),
    (LiveTradingNotAllowedError, 403),
    (OrderStatusUnknownError, 202),
    (RiskCheckError, 422),
    (OrderValidationError, 422),
    (ExchangeRejectedError, 422),
    (UnknownConnectorError, 422),
    (ExchangeUnavailableError, 503),  # RateLimitedError included
    (ExchangeOrderNotFoundError, 409),
    (OrderNotFoundError, 404),
    (IllegalTransitionError, 409),
    (PluginError, 500),
    (ConfigurationError, 500),
    (ExchangeError, 502),
    (BagbotError, 500),
)

#: The ``type`` of errors that are not bagbot's own, by status.
HTTP_TYPES: Mapping[int, str] = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
    405: "MethodNotAllowed", 408: "RequestTimeout", 409: "Conflict", 413: "PayloadTooLarge",
    415: "UnsupportedMediaType", 422: "ValidationError", 429: "TooManyRequests",
    500: "InternalError", 503: "ServiceUnavailable",
}
_MESSAGES: Mapping[int, str] = {
    404: "no such route", 405: "this route does not take that method",
    413: "the request body is too large", 408: "the request body was not received in time",
}
KEY_REUSED = ("the Idempotency-Key is already used by a different order (or by another "
              "user); use a new key for a new order")
#: Seconds a client is told to wait when the exchange or the database gave no hint.
DEFAULT_RETRY_AFTER = 1


class ApiError(Exception):
    """A refusal the service decides itself (authentication, rate limit, permissions)."""

    def __init__(self, status: int, message: str, *, type_: str | None = None,
                 details: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_ or HTTP_TYPES.get(status, "HTTPError")
        self.message = message
        self.details = dict(details or {})
        self.headers = dict(headers or {})


class BagbotJSONResponse(JSONResponse):
    """JSON that never fails on a row's ``details`` (decimals, times become text)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":"),
                          default=str).encode("utf-8")


def order_json(order: Any) -> dict[str, Any] | None:
    """An order row as the API shows it (``OrderView.as_dict()``), or ``None``."""
    if order is None or getattr(order, "id", None) is None:
        return None
    return order.view().as_dict()  # type: ignore[no-any-return]


def error_response(status: int, type_: str, message: str, *,
                   details: Mapping[str, Any] | None = None, order: Any = None,
                   headers: Mapping[str, str] | None = None) -> BagbotJSONResponse:
    """The one error body."""
    body = {"type": type_, "message": audit.redact_text(message), "details": dict(details or {}),
            "order": order_json(order)}
    return BagbotJSONResponse(body, status_code=status, headers=dict(headers or {}))


def status_for(error: BagbotError) -> int:
    for cls, status in STATUS_MAP:
        if isinstance(error, cls):
            return status
    return 500  # pragma: no cover - BagbotError closes the map


def retry_after(error: BaseException) -> str:
    """Whole seconds, at least one (``Retry-After`` takes no fractions)."""
    hint = getattr(error, "retry_after", None)
    if isinstance(hint, int | float) and math.isfinite(hint) and hint > 0:
        return str(math.ceil(hint))
    return str(DEFAULT_RETRY_AFTER)


def bagbot_error_response(error: BagbotError) -> BagbotJSONResponse:
    status = status_for(error)
    message = str(error) or type(error).__name__
    details: dict[str, Any] = {}
    headers: dict[str, str] = {}
    order = getattr(error, "order", None)
    if isinstance(error, IdempotencyKeyReusedError):
        message, order = KEY_REUSED, None  # never name another user's order
    elif isinstance(error, RiskCheckError):
        details["violations"] = [v.as_dict() for v in error.violations]
    elif isinstance(error, ExchangeUnavailableError | RateLimitedError):
        headers["Retry-After"] = retry_after(error)
    elif isinstance(error, ConfigurationError | PluginError) and status == 500:
        message = f"the server is misconfigured: {message}"
    return error_response(status, type(error).__name__, message, details=details,
                          order=order, headers=headers)


def _validation_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """FastAPI's errors without the rejected input (it may hold anything the client sent)."""
    out = []
    for error in errors[:20]:
        message = str(error.get("msg", "invalid"))
        if error.get("type") == "json_invalid":
            context = error.get("ctx") or {}
            message = f"the body is not valid JSON: {context.get('error', 'decode error')}"
        out.append({"loc": [str(part) for part in error.get("loc", ())],
                    "msg": message, "type": str(error.get("type", ""))})
    return out


def _where(loc: Sequence[str]) -> str:
    parts = [part for part in loc if part != "body"] or list(loc)
    return ".".join(parts) or "request"


async def _on_bagbot_error(_request: Request, exc: Exception) -> BagbotJSONResponse:
    assert isinstance(exc, BagbotError)
    return bagbot_error_response(exc)


async def _on_api_error(_request: Request, exc: Exception) -> BagbotJSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.type, exc.message, details=exc.details,
                          headers=exc.headers)


async def _on_validation_error(_request: Request, exc: Exception) -> BagbotJSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _validation_errors(exc.errors())
    message = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in errors[:3])
    return error_response(422, "ValidationError", message or "invalid request",
                          details={"errors": errors})


async def _on_http_error(_request: Request, exc: Exception) -> BagbotJSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) and status not in _MESSAGES else None
    return error_response(status, HTTP_TYPES.get(status, "HTTPError"),
                          detail or _MESSAGES.get(status, "request refused"),
                          headers=exc.headers)


async def _on_database_error(_request: Request, exc: Exception) -> BagbotJSONResponse:
    assert isinstance(exc, SQLAlchemyError)
    audit.get_logger().error("http_database_error", error=f"{type(exc).__name__}: {exc}")
    if isinstance(exc, OperationalError | InterfaceError) or (
            isinstance(exc, DBAPIError) and exc.connection_invalidated):
        return error_response(503, "DatabaseUnavailable",
                              "the database did not answer; try again",
                              headers={"Retry-After": str(DEFAULT_RETRY_AFTER)})
    return error_response(500, "InternalError", "a database error occurred; it was logged")


async def _on_unexpected(_request: Request, exc: Exception) -> BagbotJSONResponse:
    audit.get_logger().error("http_internal_error", error=f"{type(exc).__name__}: {exc}")
    return error_response(500, "InternalError", "an internal error occurred; it was logged")


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the one error body."""
    app.add_exception_handler(BagbotError, _on_bagbot_error)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(SQLAlchemyError, _on_database_error)
    app.add_exception_handler(Exception, _on_unexpected)
