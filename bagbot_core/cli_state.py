"""``bagbot halt|reduce|resume`` and ``bagbot risk status``: the kill switch on the command
line (see :mod:`bagbot_core.trading_state`).

Attached to the root group by :func:`register` at the end of :mod:`bagbot_core.cli`, whose
conventions hold here too (one ``error:`` line on stderr, exit 1 for a bagbot error, 2 for
bad usage). This module imports only click at start-up: the commands import the rest when
they run, so ``bagbot --help`` stays light.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from bagbot_core.cli import Settings
    from bagbot_core.router import Router
    from bagbot_core.trading_state import ScopeState, StateChange

_DONE = {"halted": "halted", "reducing": "reducing-only", "active": "resumed"}


def _who() -> str:
    return os.environ.get("USER") or "cli"


def _scope_options(command: Any) -> Any:
    command = click.option("--json", "as_json", is_flag=True,
                           help="Print the recorded change as JSON.")(command)
    command = click.option("--by", "who", default=_who, show_default="$USER or 'cli'",
                           help="Who is making the change (recorded with it).")(command)
    command = click.option("--reason", required=True,
                           help="Why (recorded with the change and in the audit log).")(command)
    command = click.option("--connector", default=None,
                           help="Only this connector (with --user: that user there).")(command)
    return click.option("--user", "user_id", default=None,
                        help="Only this user (default: every user).")(command)


def _validated(user_id: str | None, connector: str | None, reason: str, who: str) -> None:
    """Bad usage (exit 2) rather than a bagbot error: nothing was attempted."""
    from bagbot_core.errors import ConfigurationError
    from bagbot_core.trading_state import check_change

    try:
        check_change(user_id=user_id, connector=connector, reason=reason, who=who)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None


def _change(settings: Settings, state: str, *, user_id: str | None, connector: str | None,
            reason: str, who: str, cancel_open: bool = False) -> StateChange:
    from bagbot_core import cli as base

    _validated(user_id, connector, reason, who)

    async def work(router: Router, session: Session) -> StateChange:
        scope: dict[str, Any] = {"user_id": user_id, "connector": connector, "reason": reason,
                                 "who": who}
        if state == "halted":
            change: StateChange = await router.halt(session, cancel_open=cancel_open, **scope)
        elif state == "reducing":
            change = await router.reduce(session, **scope)
        else:
            change = await router.resume(session, **scope)
        return change

    return base._with_router(settings, work)


def _echo_change(change: StateChange, as_json: bool, cancel_open: bool) -> None:
    from bagbot_core import cli as base

    if as_json:
        data: dict[str, Any] = change.as_dict()
        if cancel_open:
            data["canceled"] = [
                {"order": o.order.view().as_dict(),
                 "error": None if o.error is None else f"{type(o.error).__name__}: {o.error}"}
                for o in change.canceled]
        click.echo(base._json(data))
    else:
        was = change.previous.value if change.previous is not None else "never set"
        click.echo(f"{_DONE[change.state.value]}: {change.scope.describe()} (was {was}; by "
                   f"{base._cell(change.who)}: {base._cell(change.reason)})")
        if cancel_open:
            for outcome in change.canceled:
                order = outcome.order
                what = (f"order {order.id} ({base._cell(order.connector)} {order.side} "
                        f"{base._dec(order.qty)} {base._cell(order.symbol)}, user "
                        f"{base._cell(order.user_id)})")
                if outcome.error is None:
                    click.echo(f"canceled {what}: now {order.status}")
                else:
                    click.echo(f"could not cancel {what}: "
                               f"{base._cell(base._one_line(str(outcome.error)))}")
            if not change.canceled:
                click.echo("no open orders to cancel")
    failed = [o for o in change.canceled if o.error is not None]
    if failed:
        raise click.ClickException(
            f"{len(failed)} of {len(change.canceled)} open order(s) could not be canceled; "
            "trading stays halted")


@click.command()
@click.option("--cancel-open", is_flag=True,
              help="Also cancel the scope's open orders, reporting each.")
@_scope_options
@click.pass_obj
def halt(settings: Settings, user_id: str | None, connector: str | None, reason: str,
         who: str, as_json: bool, cancel_open: bool) -> None:
    """Stop new orders: everywhere, or for --user and/or --connector.

    Cancels, syncs and reconciles still work; every process routing into this database
    obeys at its next order. Exit code 1 if any open order could not be canceled.
    """
    change = _change(settings, "halted", user_id=user_id, connector=connector, reason=reason,
                     who=who, cancel_open=cancel_open)
    _echo_change(change, as_json, cancel_open)


@click.command()
@_scope_options
@click.pass_obj
def reduce(settings: Settings, user_id: str | None, connector: str | None, reason: str,
           who: str, as_json: bool) -> None:
    """Let only orders through that reduce the user's position (sell a long, buy a short)."""
    change = _change(settings, "reducing", user_id=user_id, connector=connector,
                     reason=reason, who=who)
    _echo_change(change, as_json, False)


@click.command()
@_scope_options
@click.pass_obj
def resume(settings: Settings, user_id: str | None, connector: str | None, reason: str,
           who: str, as_json: bool) -> None:
    """Set the scope back to active (a broader scope's halt still applies)."""
    change = _change(settings, "active", user_id=user_id, connector=connector, reason=reason,
                     who=who)
    _echo_change(change, as_json, False)


STATUS_HEADERS = ("SCOPE", "USER", "CONNECTOR", "STATE", "SINCE (UTC)", "BY", "REASON")


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_obj
def status(settings: Settings, as_json: bool) -> None:
    """Trading states: every scope ever set, with who set it, when and why."""
    from bagbot_core import cli as base
    from bagbot_core.trading_state import scope_states

    states: list[ScopeState] = base._read(settings, scope_states)
    if as_json:
        click.echo(base._json([s.as_dict() for s in states]))
        return
    if not states:
        click.echo("trading is active everywhere (no trading state was ever set)")
        return
    rows = [[s.scope.kind, base._cell(s.scope.user_id or "*", 24),
             base._cell(s.scope.connector or "*", 16), s.state.value.upper(),
             base._utc(s.changed_at), base._cell(s.who, 24), base._cell(s.reason, 60)]
            for s in states]
    click.echo(base.format_table(STATUS_HEADERS, rows))


def register(cli: click.Group) -> None:
    """Add ``halt``, ``reduce``, ``resume`` to ``cli`` and ``status`` to its ``risk`` group
    (created if the CLI has none)."""
    for command in (halt, reduce, resume):
        cli.add_command(command)
    risk = cli.commands.get("risk")
    if not isinstance(risk, click.Group):
        risk = click.Group("risk", help="Risk controls: trading states.")
        cli.add_command(risk)
    risk.add_command(status)
