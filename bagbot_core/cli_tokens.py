"""``bagbot tokens create|list|revoke``: the API tokens of ``bagbot serve`` on the command
line (see :mod:`bagbot_core.tokens`).

Attached to the root group by :func:`register` at the end of :mod:`bagbot_core.cli`, whose
conventions hold here too (one ``error:`` line on stderr, exit 1 for a bagbot error, 2 for
bad usage). Only click is imported at start-up: argon2 and SQLAlchemy load when a command
runs, so ``bagbot --help`` stays light.

``create`` prints the raw token alone on stdout (``TOKEN=$(bagbot tokens create ...)``
works) and says on stderr that it is never shown again: only its hash is stored.
"""

from __future__ import annotations

import datetime as dt
import re
from types import ModuleType
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from bagbot_core.cli import Settings
    from bagbot_core.tokens import TokenInfo

_LIFETIME = re.compile(r"([0-9]{1,6})([dhm])", re.ASCII)
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
#: A longer lifetime is a typo, not a plan: revoke a token instead of outliving it.
MAX_LIFETIME = dt.timedelta(days=3650)
LIST_HEADERS = ("ID", "USER", "ADMIN", "LIVE", "STATUS", "CREATED (UTC)", "EXPIRES (UTC)",
                "LAST USED (UTC)", "LABEL")


def parse_lifetime(text: str) -> dt.timedelta:
    """``30d``, ``12h`` or ``90m`` as a timedelta.

    :raises ValueError: anything else, zero, or more than :data:`MAX_LIFETIME`.
    """
    match = _LIFETIME.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a lifetime: write a number and d, h or m "
                         "(30d, 12h, 90m)")
    lifetime = dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    if not dt.timedelta(0) < lifetime <= MAX_LIFETIME:
        raise ValueError(f"a lifetime must be more than 0 and at most {MAX_LIFETIME.days}d")
    return lifetime


def _lifetime_option(ctx: click.Context, param: click.Parameter, value: str | None
                     ) -> dt.timedelta | None:
    if value is None:
        return None
    try:
        return parse_lifetime(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _tokens() -> ModuleType:
    try:
        from bagbot_core import tokens
    except ImportError as exc:  # argon2-cffi comes with the service extra
        raise click.ClickException(
            f"API tokens need the service extra ({exc.name or exc}): "
            "pip install 'bagbot-core[service]'") from None
    return tokens


def _session(settings: Settings, work: Any, *, audited: bool = False) -> Any:
    """Run ``work(session)``; a change is written to the audit log like every other."""
    from bagbot_core import cli as base

    if audited:
        base._setup_audit(settings, settings.url())
    return base._read(settings, work)


def _when(value: dt.datetime | None) -> str:
    from bagbot_core import cli as base

    return "-" if value is None else base._utc(value)


@click.group()
def tokens() -> None:
    """API tokens for `bagbot serve`: create, list, revoke."""


@tokens.command("create")
@click.option("--user", "user_id", required=True, help="The user the token acts for.")
@click.option("--admin", is_flag=True, help="Act on every user's orders and trading states.")
@click.option("--live", is_flag=True,
              help="May place live orders (testnet: false), where BAGBOT_ALLOW_LIVE allows.")
@click.option("--expires", "expires_in", metavar="30d|12h|90m", callback=_lifetime_option,
              help="Lifetime (default: until revoked).")
@click.option("--label", default=None, help="A note to tell tokens apart (e.g. 'ci').")
@click.option("--json", "as_json", is_flag=True, help="Print the token and its grants as JSON.")
@click.pass_obj
def create(settings: Settings, user_id: str, admin: bool, live: bool,
           expires_in: dt.timedelta | None, label: str | None, as_json: bool) -> None:
    """Create a token and print it: this is the only time it is shown."""
    from bagbot_core import cli as base
    from bagbot_core.errors import ConfigurationError

    module = _tokens()
    try:  # bad usage (exit 2) rather than a bagbot error: nothing was written
        module.check_user_id(user_id)
        module.check_label(label)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None

    def work(session: Session) -> tuple[str, Any]:
        made: tuple[str, Any] = module.create_token(
            session, user_id, admin=admin, live=live, expires_in=expires_in, label=label)
        return made

    raw, identity = _session(settings, work, audited=True)
    if as_json:
        expires = identity.expires_at
        click.echo(base._json({
            "token": raw, "token_id": identity.token_id, "user_id": identity.user_id,
            "admin": identity.admin, "live": identity.live, "label": label,
            "expires_at": None if expires is None else expires.isoformat()}))
    else:
        click.echo(raw)
    grants = ", ".join(g for g, on in (("admin", admin), ("live", live)) if on) or "user"
    click.echo(f"warning: token {identity.token_id} ({grants}, user "
               f"{base._cell(identity.user_id)}, expires {_when(identity.expires_at)}) is "
               "shown only this once: store it now; bagbot keeps only its hash", err=True)


@tokens.command("list")
@click.option("--user", "user_id", default=None, help="Only this user's tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_obj
def list_(settings: Settings, user_id: str | None, as_json: bool) -> None:
    """Every token (revoked and expired ones too), oldest first; never a secret."""
    from bagbot_core import cli as base

    module = _tokens()
    found: list[TokenInfo] = _session(
        settings, lambda session: module.list_tokens(session, user_id=user_id))
    if as_json:
        click.echo(base._json([info.as_dict() for info in found]))
        return
    if not found:
        click.echo("no API tokens" + ("" if user_id is None else
                                      f" for user {base._cell(user_id)}"))
        return
    rows = [[t.token_id, base._cell(t.user_id, 24), "yes" if t.admin else "no",
             "yes" if t.live else "no", t.status().upper(), _when(t.created_at),
             _when(t.expires_at), _when(t.last_used_at), base._cell(t.label or "-", 40)]
            for t in found]
    click.echo(base.format_table(LIST_HEADERS, rows))


@tokens.command("revoke")
@click.argument("token_id")
@click.pass_obj
def revoke(settings: Settings, token_id: str) -> None:
    """Revoke a token: every `bagbot serve` process refuses it from its next request."""
    from bagbot_core import cli as base

    module = _tokens()

    def work(session: Session) -> tuple[bool, TokenInfo | None]:
        revoked = module.revoke_token(session, token_id)
        known = [t for t in module.list_tokens(session) if t.token_id == token_id]
        return revoked, known[0] if known else None

    revoked, info = _session(settings, work, audited=True)
    if info is None:
        raise click.ClickException(f"no API token with id {base._cell(token_id, 40)!r} "
                                   "(bagbot tokens list shows them)")
    if revoked:
        click.echo(f"revoked token {info.token_id} (user {base._cell(info.user_id)})")
    else:
        click.echo(f"token {info.token_id} was already revoked at {_when(info.revoked_at)}")


def register(cli: click.Group) -> None:
    """Add the ``tokens`` group to ``cli``."""
    cli.add_command(tokens)
