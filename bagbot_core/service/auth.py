"""Who a request acts for: the Bearer token, and each token's request rate.

The token is checked on every request by :class:`.token_check.TokenChecker` (the row is
read each time, so a revocation applies at once, through reads that never wait for SQLite's
write lock). Its argon2 verify is slow on purpose, so it runs in a worker thread, never on
the event loop, and only the first time this process sees the token.

The rate limit is a token bucket per API token, kept in this process: ``rate`` requests a
second, bursts up to ``burst``. Several ``bagbot serve`` processes (workers, instances) each
apply it, so a token may make up to N times the rate across N of them.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bagbot_core.service.errors import ApiError
from bagbot_core.service.runtime import Runtime, runtime
from bagbot_core.tokens import TokenIdentity

#: Buckets kept; the least recently used token's is dropped first (it refills anyway).
MAX_BUCKETS = 10_000

bearer = HTTPBearer(auto_error=False, scheme_name="token",
                    description="An API token from `bagbot tokens create`.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


class RateLimiter:
    """Token buckets by key: ``rate`` per second, up to ``burst`` at once; ``rate`` 0: off."""

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Spend one request of ``key``'s bucket: 0 if allowed, else the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        with self._lock:
            level, then = self._buckets.pop(key, (self.burst, now))
            level = min(self.burst, level + (now - then) * self.rate)
            if level >= 1:
                level -= 1
                wait = 0.0
            else:
                wait = (1 - level) / self.rate
            self._buckets[key] = (level, now)
            while len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
        return wait


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers=_CHALLENGE)


async def current_identity(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> TokenIdentity:
    """The token's identity; 401 without a valid one, 429 over its rate."""
    if credentials is None:
        raise unauthorized("this route needs an API token (from bagbot tokens create) in "
                           "the Authorization header (scheme Bearer)")
    service = runtime(request)
    identity = await service.authenticate(credentials.credentials)
    if identity is None:
        raise unauthorized("the API token is malformed, unknown, expired or revoked")
    wait = service.limiter.take(identity.token_id)
    if wait > 0:
        raise ApiError(429, "too many requests for this token; slow down",
                       headers={"Retry-After": str(max(1, math.ceil(wait)))},
                       details={"rate_per_second": service.limiter.rate})
    return identity


async def admin_identity(
    identity: Annotated[TokenIdentity, Depends(current_identity)],
) -> TokenIdentity:
    """An admin token's identity; 403 for a user token."""
    if not identity.admin:
        raise ApiError(403, "this route needs an admin token (bagbot tokens create --admin)")
    return identity


Identity = Annotated[TokenIdentity, Depends(current_identity)]
Admin = Annotated[TokenIdentity, Depends(admin_identity)]
ServiceRuntime = Annotated[Runtime, Depends(runtime)]
