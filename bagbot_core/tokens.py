"""API tokens for ``bagbot serve``: create, list, revoke, authenticate.

A token reads ``bgt_<id>_<secret>``: ``id`` is 12 characters of ``[a-z0-9]``, public (it is
what ``bagbot tokens list`` shows and ``revoke`` takes, and the row's primary key), and
``secret`` is 32 random bytes in URL-safe base64 (43 characters). The raw token is returned
once, by :func:`create_token`; the database keeps only its argon2id hash, so a copy of the
table does not let anyone in.

argon2 is slow on purpose, which would make every request pay tens of milliseconds. So a
successful verify is remembered in this process (the SHA-256 of the raw token -> its id, in
a bounded LRU), but the row is still read by primary key on every call: a revocation or an
expiry applies at once, in every process, cached or not. :func:`authenticate` reads and
writes through a session; a caller that must never wait for a writer (the HTTP service)
reads through :func:`check_token` or the steps it is made of, on a connection that only
reads, and writes ``last_used_at`` apart, with :func:`record_use`.

The secrets carry 256 bits, so no hash setting protects them from guessing: the argon2
parameters (OWASP's 19 MiB, two passes, one lane) bound what a flood of wrong guesses for a
known id costs the server while keeping a stolen table's hashes expensive to test.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import string
import threading
from collections import OrderedDict
from typing import Any

import attrs
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, bindparam, or_, select, update
from sqlalchemy.orm import Session

from bagbot_core import audit
from bagbot_core.errors import ConfigurationError
from bagbot_core.models import ApiToken, utcnow

PREFIX = "bgt_"
ID_LENGTH = 12
SECRET_BYTES = 32
MAX_LABEL = 200
#: ``last_used_at`` is written when it is older than this: not one write per request.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)
#: Verified tokens remembered per process.
CACHE_SIZE = 1024

_ID_ALPHABET = string.ascii_lowercase + string.digits
_TOKEN = re.compile(rf"{PREFIX}([a-z0-9]{{{ID_LENGTH}}})_([A-Za-z0-9_-]{{43}})", re.ASCII)
_HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
_USER_ID_RULE = "user_id must be a non-empty string of at most 128 printable characters"


@attrs.frozen
class TokenIdentity:
    """Who a request acts for: what :func:`authenticate` returns. Holds no secret."""

    token_id: str
    user_id: str
    admin: bool
    live: bool
    expires_at: dt.datetime | None


@attrs.frozen
class TokenInfo:
    """A token as ``bagbot tokens list`` shows it: everything but the hash."""

    token_id: str
    user_id: str
    admin: bool
    live: bool
    label: str | None
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None

    def status(self, now: dt.datetime | None = None) -> str:
        """``revoked``, ``expired`` or ``active``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or utcnow()):
            return "expired"
        return "active"

    def as_dict(self) -> dict[str, Any]:
        def iso(value: dt.datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {"token_id": self.token_id, "user_id": self.user_id, "admin": self.admin,
                "live": self.live, "label": self.label, "status": self.status(),
                "created_at": iso(self.created_at), "expires_at": iso(self.expires_at),
                "revoked_at": iso(self.revoked_at), "last_used_at": iso(self.last_used_at)}


class _VerifiedCache:
    """SHA-256 of a verified raw token -> its id; least recently used dropped first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()  # the service may authenticate in worker threads

    def holds(self, digest: bytes, token_id: str) -> bool:
        with self._lock:
            cached = self._items.get(digest)
            if cached is None:
                return False
            self._items.move_to_end(digest)
        return hmac.compare_digest(cached, token_id)

    def add(self, digest: bytes, token_id: str) -> None:
        with self._lock:
            self._items[digest] = token_id
            self._items.move_to_end(digest)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_verified = _VerifiedCache(CACHE_SIZE)


def check_user_id(user_id: object) -> str:
    """The router's rule for user ids: a token acts for a user an order can carry.

    :raises ConfigurationError: any other value.
    """
    if not (isinstance(user_id, str) and user_id.strip() and len(user_id) <= 128
            and user_id.isprintable()):
        raise ConfigurationError(f"{_USER_ID_RULE}, got {ascii(user_id)[:60]}")
    return user_id


def check_label(label: object) -> str | None:
    """:raises ConfigurationError: a label that is empty, too long or not printable."""
    if label is None:
        return None
    if not (isinstance(label, str) and label.strip() and len(label) <= MAX_LABEL
            and label.isprintable()):
        raise ConfigurationError(
            f"label must be a non-empty string of at most {MAX_LABEL} printable characters")
    return label


def identity_of(row: Any) -> TokenIdentity:
    """The identity a token row grants."""
    return TokenIdentity(row.id, row.user_id, bool(row.admin), bool(row.live), row.expires_at)


def create_token(
    session: Session, user_id: str, *, admin: bool = False, live: bool = False,
    expires_in: dt.timedelta | None = None, label: str | None = None,
) -> tuple[str, TokenIdentity]:
    """Create a token and commit it; returns the raw token (shown once, never again).

    :param expires_in: lifetime from now; ``None``: until revoked.
    :raises ConfigurationError: an invalid user id, label or lifetime.
    """
    check_user_id(user_id)
    label = check_label(label)
    if expires_in is not None and expires_in <= dt.timedelta(0):
        raise ConfigurationError("a token's lifetime must be positive")
    now = utcnow()
    try:
        expires_at = None if expires_in is None else now + expires_in
    except OverflowError:
        raise ConfigurationError("a token's lifetime must end before the year 10000") from None
    while True:  # 36**12 ids: a collision is as good as impossible, but never an error
        token_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))
        if session.get(ApiToken, token_id) is None:
            break
    raw = f"{PREFIX}{token_id}_{secrets.token_urlsafe(SECRET_BYTES)}"
    row = ApiToken(id=token_id, user_id=user_id, admin=bool(admin), live=bool(live),
                   label=label, hash=_HASHER.hash(raw), created_at=now, expires_at=expires_at)
    session.add(row)
    session.commit()
    # Audit keys naming a token are masked as credentials: the id goes under ``id``.
    audit.get_logger(user_id=user_id).info(
        "token_created", id=token_id, admin=bool(admin), live=bool(live),
        expires_at=None if expires_at is None else expires_at.isoformat())
    return raw, TokenIdentity(token_id, user_id, bool(admin), bool(live), expires_at)


def list_tokens(session: Session, *, user_id: str | None = None) -> list[TokenInfo]:
    """Every token (or ``user_id``'s), oldest first; revoked and expired ones included."""
    query = select(ApiToken.id, ApiToken.user_id, ApiToken.admin, ApiToken.live,
                   ApiToken.label, ApiToken.created_at, ApiToken.expires_at,
                   ApiToken.revoked_at, ApiToken.last_used_at)
    if user_id is not None:
        query = query.where(ApiToken.user_id == user_id)
    rows = session.execute(query.order_by(ApiToken.created_at, ApiToken.id)).all()
    session.commit()
    return [TokenInfo(r.id, r.user_id, bool(r.admin), bool(r.live), r.label, r.created_at,
                      r.expires_at, r.revoked_at, r.last_used_at) for r in rows]


def revoke_token(session: Session, token_id: str) -> bool:
    """Revoke a token from now on, in every process; commits.

    :return: ``True`` if it was revoked now; ``False`` if no such token, or already revoked
        (its first revocation time is kept).
    """
    result = session.execute(
        update(ApiToken).where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow()))
    session.commit()
    revoked = bool(getattr(result, "rowcount", 0))
    if revoked:
        audit.get_logger().info("token_revoked", id=token_id)
    return revoked


#: The row :func:`authenticate` reads: one primary-key lookup, a statement compiled once.
TOKEN_ROW = (select(ApiToken.id, ApiToken.user_id, ApiToken.admin, ApiToken.live,
                    ApiToken.hash, ApiToken.expires_at, ApiToken.revoked_at,
                    ApiToken.last_used_at)
             .where(ApiToken.id == bindparam("token_id")))


def token_id_of(raw: object) -> str | None:
    """The public id of a well-formed token; ``None`` for anything else."""
    match = _TOKEN.fullmatch(raw) if isinstance(raw, str) else None
    return None if match is None else match.group(1)


def usable(row: Any, now: dt.datetime) -> bool:
    """The row exists and is neither revoked nor expired at ``now`` (secret not checked)."""
    return row is not None and row.revoked_at is None and (
        row.expires_at is None or row.expires_at > now)


def verified_before(raw: str, token_id: str) -> bool:
    """This process already verified ``raw`` as ``token_id``'s secret (no argon2 needed)."""
    return _verified.holds(hashlib.sha256(raw.encode()).digest(), token_id)


def verify_secret(row: Any, raw: str) -> bool:
    """argon2-verify ``raw`` against the row's hash (tens of ms: keep it off an event loop);
    remembered in this process when it matches."""
    try:
        _HASHER.verify(row.hash, raw)
    except (VerificationError, InvalidHashError):
        return False
    _verified.add(hashlib.sha256(raw.encode()).digest(), row.id)
    return True


def last_used_stale(row: Any, now: dt.datetime) -> bool:
    """``last_used_at`` is due for a write (at most one a :data:`LAST_USED_RESOLUTION`)."""
    return bool(row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION)


def _mark_used(token_id: str, now: dt.datetime) -> Any:
    # Conditional, so processes that all saw a stale value write it once between them.
    return (update(ApiToken)
            .where(ApiToken.id == token_id,
                   or_(ApiToken.last_used_at.is_(None),
                       ApiToken.last_used_at <= now - LAST_USED_RESOLUTION))
            .values(last_used_at=now))


def record_use(session: Session, token_id: str, now: dt.datetime | None = None) -> None:
    """Write ``last_used_at`` unless another call did within the resolution; commits."""
    session.execute(_mark_used(token_id, now or utcnow()))
    session.commit()


def check_token(conn: Connection, raw: str) -> tuple[TokenIdentity | None, bool]:
    """:func:`authenticate` on a connection that only reads: the identity (or ``None``),
    and whether ``last_used_at`` is due (the caller writes it, with :func:`record_use`,
    through a connection that may write). Ends no transaction: ``conn`` is meant to be in
    autocommit (each read sees what other processes committed before it).
    """
    token_id = token_id_of(raw)
    if token_id is None:
        return None, False
    row = conn.execute(TOKEN_ROW, {"token_id": token_id}).first()
    now = utcnow()
    if row is None or not usable(row, now):
        return None, False
    if not verified_before(raw, token_id) and not verify_secret(row, raw):
        return None, False
    return identity_of(row), last_used_stale(row, now)


def authenticate(session: Session, raw: str) -> TokenIdentity | None:
    """The identity behind ``raw``, or ``None`` (malformed, unknown, wrong secret, expired,
    revoked). Never raises for any text; ends the transaction it opened (commits).

    The row is read on every call (one primary-key lookup); only the argon2 verify is
    skipped for a token this process already verified.
    """
    token_id = token_id_of(raw)
    if token_id is None:
        return None
    row = session.execute(TOKEN_ROW, {"token_id": token_id}).first()
    now = utcnow()
    if row is None or not usable(row, now) or not (
            verified_before(raw, token_id) or verify_secret(row, raw)):
        session.commit()
        return None
    if last_used_stale(row, now):
        session.execute(_mark_used(token_id, now))
    session.commit()
    return identity_of(row)


def forget_verified() -> None:
    """Empty this process's cache of verified tokens (tests; a key rotation drill)."""
    _verified.clear()
