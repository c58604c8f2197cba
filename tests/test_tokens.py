"""API tokens (bagbot_core.tokens) on a SQLite file and on the PostgreSQL server."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.orm import Session

from bagbot_core import tokens
from bagbot_core.db import get_engine, session_factory
from bagbot_core.errors import ConfigurationError
from bagbot_core.models import ApiToken, utcnow
from bagbot_core.router import _valid_user_id
from bagbot_core.tokens import TokenIdentity, authenticate, create_token, list_tokens, revoke_token

TOKEN_FORM = re.compile(r"bgt_[a-z0-9]{12}_[A-Za-z0-9_-]{43}")
FIXTURE_CHECKS = [HealthCheck.function_scoped_fixture]


#: ``bgt_`` and the 12-character public id; the secret follows the next ``_`` (and may hold
#: ``_`` itself: it is URL-safe base64).
PREFIX = len("bgt_") + 12


def secret_of(raw: str) -> str:
    return raw[PREFIX + 1:]


@pytest.fixture(autouse=True)
def cold_cache() -> Iterator[None]:
    tokens.forget_verified()
    yield
    tokens.forget_verified()


def other_engine_session(url: str) -> Session:
    """A session on an engine of its own: another process's view of the database."""
    return Session(create_engine(url), expire_on_commit=False)


def row_of(db: Session, token_id: str) -> ApiToken:
    row = db.execute(select(ApiToken).where(ApiToken.id == token_id)
                     .execution_options(populate_existing=True)).scalar_one()
    db.commit()
    return row


def age(db: Session, token_id: str, **values: dt.datetime) -> None:
    """Move a row's times (what the clock would do), as a write from elsewhere."""
    db.execute(update(ApiToken).where(ApiToken.id == token_id).values(**values))
    db.commit()


def test_created_token_authenticates_as_its_user(db: Session) -> None:
    raw, made = create_token(db, "alice", admin=True, live=True, label="desk 1",
                             expires_in=dt.timedelta(days=30))
    assert TOKEN_FORM.fullmatch(raw)
    assert raw.startswith(f"bgt_{made.token_id}_")
    assert made == TokenIdentity(made.token_id, "alice", True, True, made.expires_at)
    assert made.expires_at is not None
    assert dt.timedelta(days=29) < made.expires_at - utcnow() <= dt.timedelta(days=30)
    assert authenticate(db, raw) == made
    plain_raw, plain = create_token(db, "bob")
    assert (plain.admin, plain.live, plain.expires_at) == (False, False, None)
    assert authenticate(db, plain_raw) == plain


def test_the_raw_token_is_stored_nowhere(db: Session) -> None:
    raw, made = create_token(db, "alice", label="ci")
    secret = secret_of(raw)
    row = row_of(db, made.token_id)
    columns = [getattr(row, c.key) for c in ApiToken.__table__.columns]
    assert not any(secret in str(value) for value in columns)
    assert row.hash.startswith("$argon2id$")
    assert secret not in repr(row) and row.hash not in repr(row)
    assert secret not in repr(made)
    for table in ("api_tokens",):
        dump = db.execute(text(f"SELECT * FROM {table}")).all()
        assert secret not in str(dump)
    db.commit()


def test_wrong_secret_is_refused(db: Session) -> None:
    raw, made = create_token(db, "alice")
    prefix, secret = raw[:PREFIX], raw[PREFIX + 1:]
    flipped = ("B" if secret[0] == "A" else "A") + secret[1:]
    assert authenticate(db, f"{prefix}_{flipped}") is None
    _, other = create_token(db, "bob")
    assert authenticate(db, f"bgt_{other.token_id}_{secret}") is None  # alice's secret
    assert authenticate(db, raw) == made
    # A verified token does not vouch for a neighbour of it afterwards either.
    assert authenticate(db, f"{prefix}_{flipped}") is None


def test_unknown_id_is_refused(db: Session) -> None:
    raw, _ = create_token(db, "alice")
    assert authenticate(db, "bgt_zzzzzzzzzzzz_" + secret_of(raw)) is None


@pytest.mark.parametrize("bad", [
    "", "bgt_", "Bearer x", "bgt_abc_def", " bgt_aaaaaaaaaaaa_" + "A" * 43,
    "bgt_AAAAAAAAAAAA_" + "A" * 43, "bgt_aaaaaaaaaaaa_" + "A" * 42,
    "bgt_aaaaaaaaaaaa_" + "A" * 44, "bgt_aaaaaaaaaaaa_" + "A" * 42 + "=",
    "bgt_aaaaaaaaaaaa_" + "A" * 43 + "\n", "bgt_aaaaaaaaaaa\u0661_" + "A" * 43,
    "bgt_aaaaaaaaaaaa_" + "\uff21" * 43, "bgt_aaaaaaaaaaaa_\ud800" + "A" * 42, "\x00" * 60,
])
def test_malformed_tokens_are_refused(db: Session, bad: str) -> None:
    create_token(db, "alice")
    assert authenticate(db, bad) is None


@pytest.mark.parametrize("bad", [None, 12, b"bgt_aaaaaaaaaaaa_" + b"A" * 43, ["bgt_"]])
def test_non_text_is_refused(db: Session, bad: object) -> None:
    assert authenticate(db, bad) is None  # type: ignore[arg-type]


@settings(max_examples=300, suppress_health_check=FIXTURE_CHECKS)
@given(candidate=st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="ascii"), min_size=55, max_size=62),
    st.from_regex(TOKEN_FORM, fullmatch=True),
))
def test_arbitrary_text_never_authenticates_nor_raises(db: Session, candidate: str) -> None:
    assert authenticate(db, candidate) is None


@settings(max_examples=40, suppress_health_check=FIXTURE_CHECKS)
@given(data=st.data())
def test_near_misses_of_a_real_token_never_authenticate(db: Session, data: st.DataObject
                                                        ) -> None:
    """Well-formed, known id, wrong secret: the argon2 verify itself says no."""
    raw, _ = create_token(db, "alice")
    position = data.draw(st.integers(len("bgt_") + 13, len(raw) - 1))
    replacement = data.draw(st.sampled_from("ABCabc012_-").filter(lambda c: c != raw[position]))
    assert authenticate(db, raw[:position] + replacement + raw[position + 1:]) is None
    assert authenticate(db, raw) is not None


def test_expired_token_is_refused_even_once_verified(db: Session) -> None:
    raw, made = create_token(db, "alice", expires_in=dt.timedelta(hours=1))
    assert authenticate(db, raw) == made
    age(db, made.token_id, expires_at=utcnow() - dt.timedelta(seconds=1))
    assert authenticate(db, raw) is None
    (info,) = list_tokens(db)
    assert info.status() == "expired"


def test_revocation_applies_at_once_in_another_process(db: Session, db_url: str) -> None:
    """Process A verified (and cached) the token; process B revokes it; A's next call,
    through its long-lived session, refuses it."""
    raw, made = create_token(db, "alice")
    assert authenticate(db, raw) == made  # cached from now on
    elsewhere = other_engine_session(db_url)
    try:
        assert authenticate(elsewhere, raw) == made
        assert revoke_token(elsewhere, made.token_id) is True
        assert revoke_token(elsewhere, made.token_id) is False  # already revoked
    finally:
        engine = elsewhere.get_bind()
        elsewhere.close()
        engine.dispose()  # type: ignore[union-attr]
    assert authenticate(db, raw) is None
    (info,) = list_tokens(db)
    assert info.status() == "revoked" and info.revoked_at is not None


def test_revoking_an_unknown_id_changes_nothing(db: Session) -> None:
    raw, made = create_token(db, "alice")
    assert revoke_token(db, "nosuchtoken1") is False
    assert revoke_token(db, "'; DROP TABLE api_tokens; --") is False
    assert authenticate(db, raw) == made


def test_last_used_is_written_at_most_once_a_minute(db: Session) -> None:
    raw, made = create_token(db, "alice")
    assert row_of(db, made.token_id).last_used_at is None
    authenticate(db, raw)
    first = row_of(db, made.token_id).last_used_at
    assert first is not None
    authenticate(db, raw)
    assert row_of(db, made.token_id).last_used_at == first
    earlier = first - dt.timedelta(minutes=2)
    age(db, made.token_id, last_used_at=earlier)
    authenticate(db, raw)
    latest = row_of(db, made.token_id).last_used_at
    assert latest is not None and latest > earlier + dt.timedelta(minutes=1)


def test_list_shows_every_token_without_its_hash(db: Session) -> None:
    raw_a, a = create_token(db, "alice", label="one")
    _, b = create_token(db, "bob", admin=True)
    _, c = create_token(db, "alice", expires_in=dt.timedelta(minutes=5))
    revoke_token(db, c.token_id)
    everyone = list_tokens(db)
    assert [t.token_id for t in everyone] == [a.token_id, b.token_id, c.token_id]
    assert [t.token_id for t in list_tokens(db, user_id="alice")] == [a.token_id, c.token_id]
    assert list_tokens(db, user_id="nobody") == []
    hashes = [row_of(db, t.token_id).hash for t in everyone]
    for info in everyone:
        assert not hasattr(info, "hash")
        shown = f"{info!r} {info.as_dict()}"
        assert not any(h in shown for h in hashes) and "argon2" not in shown
        assert secret_of(raw_a) not in shown
    first = everyone[0].as_dict()
    assert first["label"] == "one" and first["status"] == "active"
    assert set(first) == {"token_id", "user_id", "admin", "live", "label", "status",
                          "created_at", "expires_at", "revoked_at", "last_used_at"}
    assert [t.status() for t in everyone] == ["active", "active", "revoked"]


@pytest.mark.parametrize("user_id", ["", "   ", "a" * 129, "tab\there", "nul\x00", "\ud800",
                                     None, 42, b"alice"])
def test_user_id_is_validated_like_the_routers(db: Session, user_id: object) -> None:
    with pytest.raises(ConfigurationError, match="user_id must be"):
        create_token(db, user_id)  # type: ignore[arg-type]
    assert list_tokens(db) == []


@settings(max_examples=200, suppress_health_check=FIXTURE_CHECKS)
@given(user_id=st.text(max_size=140))
def test_user_id_rule_is_the_routers(db: Session, user_id: str) -> None:
    """A token is accepted for exactly the user ids an order may carry."""
    try:
        tokens.check_user_id(user_id)
    except ConfigurationError:
        accepted = False
    else:
        accepted = True
    assert accepted == _valid_user_id(user_id)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"expires_in": dt.timedelta(0)}, "lifetime must be positive"),
    ({"expires_in": dt.timedelta(seconds=-5)}, "lifetime must be positive"),
    ({"expires_in": dt.timedelta.max}, "year 10000"),
    ({"label": ""}, "label must be"),
    ({"label": "x" * 201}, "label must be"),
    ({"label": "bell\a"}, "label must be"),
])
def test_bad_lifetime_or_label_is_refused(db: Session, kwargs: dict[str, object],
                                          message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        create_token(db, "alice", **kwargs)  # type: ignore[arg-type]
    assert list_tokens(db) == []


def test_revision_0006_upgrades_and_downgrades(db_url: str) -> None:
    from alembic import command
    from sqlalchemy import inspect

    from bagbot_core.migrate import _config, current_revision, upgrade
    from bagbot_core.migrations import HEAD

    engine = get_engine(db_url)
    with engine.begin() as conn:
        command.downgrade(_config(conn), "0005")
        assert "api_tokens" not in inspect(conn).get_table_names()
        assert current_revision(conn) == "0005"
    assert upgrade(engine) == ("0005", HEAD)
    with session_factory(engine)() as db:
        raw, made = create_token(db, "alice")
        assert authenticate(db, raw) == made


def test_audit_log_names_the_token_never_its_secret(db: Session, log_stream_json: object,
                                                    events: object) -> None:
    raw, made = create_token(db, "alice", admin=True)
    authenticate(db, raw)
    authenticate(db, raw[:-1] + ("A" if raw[-1] != "A" else "B"))
    revoke_token(db, made.token_id)
    (created,) = events("token_created")  # type: ignore[operator]
    assert (created["id"], created["user_id"], created["admin"]) == (made.token_id, "alice",
                                                                     True)
    (revoked,) = events("token_revoked")  # type: ignore[operator]
    assert revoked["id"] == made.token_id
    logged = log_stream_json.getvalue()  # type: ignore[attr-defined]
    assert secret_of(raw) not in logged and "argon2" not in logged
