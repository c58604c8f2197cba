"""The ``bagbot`` command line: route orders, look at them, manage them, list plugins.

Every command is a thin layer over the library: ``route`` calls
:func:`bagbot_core.router.route_order`, ``orders`` reads :mod:`bagbot_core.store` and calls
the router's sync/cancel/reconcile, ``plugins`` prints
:meth:`bagbot_core.plugins.PluginRegistry.plugin_infos`, ``risk show`` prints
:meth:`bagbot_core.risk_config.RiskConfig.describe`, ``route --dry-run`` calls
:meth:`bagbot_core.router.Router.check_order`.

Conventions:

* stdout carries the result -- an aligned table, or JSON with ``--json`` (decimals as plain
  strings, times as ISO 8601); stderr carries errors, one line each: ``error: ...``;
* exit codes: 0 success, 1 a bagbot error (validation, risk, exchange refusal, not found),
  2 bad usage, 3 an order whose fate is unknown (do not resend: run ``orders reconcile``);
* the audit log goes to a file (``BAGBOT_LOG_FILE``, else next to the SQLite database) so
  it never mixes with the tables; ``-v`` sends it to stderr instead;
* start-up stays cheap: SQLAlchemy, the router and asyncio are imported inside the commands
  that need them, so ``bagbot --help`` and ``bagbot plugins`` never load them (nor ccxt);
* plugins add commands through ``bagbot_register_commands`` (:func:`cli_with_plugins`, run
  by :func:`main`); :data:`cli` itself holds the core's commands only, among them the empty
  ``soak`` group connector plugins put their fault soaks in (:mod:`bagbot_core.cli_soak`).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import click

from bagbot_core.errors import BagbotError, OrderStatusUnknownError, RiskCheckError
from bagbot_core.reconcile_grace import DEFAULT_RECONCILE_GRACE
from bagbot_core.status import OrderStatus
from bagbot_core.terminal import printable

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from bagbot_core.models import Order
    from bagbot_core.plugins import PluginRegistry
    from bagbot_core.router import Router
    from bagbot_core.views import OrderView

T = TypeVar("T")

if TYPE_CHECKING:  # recent click types ParamType as generic; runtime stays version-neutral
    _DecimalParam = click.ParamType[Decimal, Any]
    _TimeParam = click.ParamType[dt.datetime, Any]
    _IntParam = click.ParamType[int, Any]
    _FloatParam = click.ParamType[float, Any]
    _TextParam = click.ParamType[str, Any]
else:
    _DecimalParam = _TimeParam = _IntParam = _FloatParam = _TextParam = click.ParamType

EXIT_ERROR = 1
EXIT_USAGE = 2
#: The order may be on the exchange: the caller must reconcile, never resend.
EXIT_STATUS_UNKNOWN = 3

ENV_USER = "BAGBOT_USER"
DEFAULT_CONNECTOR = "paper"
DEMO_USER = "demo"
DEMO_SYMBOL = "BTC/USDT"


# -- errors: one line on stderr, a meaningful exit code -------------------------------------


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _fail(message: str, code: int) -> click.exceptions.Exit:
    click.echo(f"error: {printable(_one_line(message))}", err=True)
    return click.exceptions.Exit(code)


def _describe_error(exc: BagbotError) -> str:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, RiskCheckError):
        message = f"refused by risk checks: {message}"
    order = getattr(exc, "order", None)
    if order is not None and getattr(order, "id", None) is not None:
        message += f" (order {order.id} recorded as {order.status})"
    return message


@contextlib.contextmanager
def _errors_as_one_line() -> Iterator[None]:
    """Turn expected failures into ``error: ...`` plus an exit code, never a traceback."""
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise  # click prints the help itself
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        raise _fail(exc.format_message() + hint, EXIT_USAGE) from None
    except click.ClickException as exc:
        raise _fail(exc.format_message(), exc.exit_code) from None
    except OrderStatusUnknownError as exc:
        connector = getattr(exc.order, "connector", None) or "NAME"
        raise _fail(
            f"{_describe_error(exc)} -- do NOT resend this order; find out what happened "
            f"with: bagbot orders reconcile --connector {connector}",
            EXIT_STATUS_UNKNOWN,
        ) from None
    except BagbotError as exc:
        raise _fail(_describe_error(exc), EXIT_ERROR) from None
    except Exception as exc:
        sa_exc = sys.modules.get("sqlalchemy.exc")
        if sa_exc is not None and isinstance(exc, sa_exc.SQLAlchemyError):
            from bagbot_core.audit import redact_text

            raise _fail(f"database: {type(exc).__name__}: {redact_text(str(exc))}",
                        EXIT_ERROR) from None
        raise


class BagbotGroup(click.Group):
    """The root group: parses and runs commands with :func:`_errors_as_one_line`."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with _errors_as_one_line():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _errors_as_one_line():
            return super().invoke(ctx)


# -- parameter types ------------------------------------------------------------------------


class DecimalType(_DecimalParam):
    """An exact, positive decimal (never a float); refuses NaN, infinities, ``abc``."""

    name = "decimal"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> Decimal:
        from bagbot_core.errors import OrderValidationError
        from bagbot_core.money import to_decimal

        field = (param.name or "value") if param is not None else "value"
        try:
            return to_decimal(value if isinstance(value, Decimal) else str(value), field)
        except OrderValidationError as exc:
            self.fail(str(exc), param, ctx)


class IsoTimeType(_TimeParam):
    """An ISO 8601 date or time; a time without zone is taken as UTC."""

    name = "iso-time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> dt.datetime:
        if isinstance(value, dt.datetime):
            parsed = value
        else:
            try:
                parsed = dt.datetime.fromisoformat(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not an ISO 8601 time (e.g. 2024-05-01 or "
                          "2024-05-01T12:30:00Z)", param, ctx)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        try:
            return parsed.astimezone(dt.UTC)
        except OverflowError:
            # A valid time UTC cannot hold (0001-01-01T00:30+01:00): as a bound, the
            # calendar's nearest end selects the same orders.
            end = dt.datetime.min if parsed.year == dt.MINYEAR else dt.datetime.max
            return end.replace(tzinfo=dt.UTC)


class OrderIdType(_IntParam):
    """An order id: ASCII digits, 1 to 2**63-1 (beyond, no database could hold it)."""

    name = "integer"
    MAX = 2**63 - 1

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            text = str(value)
            digits = text[1:] if text[:1] in "+-" else text
            if not (digits.isascii() and digits.isdigit()):
                self.fail(f"{text!r} is not a valid integer", param, ctx)
            number = int(text)
        if not 1 <= number <= self.MAX:
            self.fail(f"{number} is not an order id (1 to {self.MAX})", param, ctx)
        return number


class SecondsType(_FloatParam):
    """A finite number of seconds in ``[0, maximum]`` (NaN, infinities, ``1e300`` refused:
    a timedelta cannot hold them)."""

    name = "seconds"

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> float:
        text = str(value).strip()
        try:
            seconds = float(text) if text.isascii() else float("nan")
        except ValueError:
            seconds = float("nan")
        if not 0 <= seconds <= self.maximum:  # also false for NaN
            self.fail(f"{value!r} is not a number of seconds from 0 to {self.maximum}",
                      param, ctx)
        return seconds


class FilterText(_TextParam):
    """Text to look rows up by: refuses what no row can hold (undecodable bytes, NUL), so a
    query never carries text the database driver cannot encode."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> str:
        text = str(value)
        if any(c == "\x00" or "\ud800" <= c <= "\udfff" for c in text):
            self.fail(f"{text!r} contains bytes that are not UTF-8 text (or NUL)", param, ctx)
        return text


DECIMAL = DecimalType()
ISO_TIME = IsoTimeType()
ORDER_ID = OrderIdType()
#: A year: older unresolved orders are past any exchange's memory anyway.
MAX_GRACE_SECONDS = 365 * 24 * 3600
GRACE_SECONDS = SecondsType(MAX_GRACE_SECONDS)
FILTER_TEXT = FilterText()


def _default_user() -> str:
    from bagbot_core.settings import Settings

    return Settings.from_env(only=("user",)).user or os.environ.get("USER") or "cli"


# -- shared state and plumbing --------------------------------------------------------------


class Settings:
    """The global options, shared with every command through ``ctx.obj``."""

    def __init__(self, database_url: str | None, verbose: bool,
                 config_path: str | None = None,
                 connector_options: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.database_url = database_url
        self.verbose = verbose
        #: ``--config``: the config file instead of ``BAGBOT_CONFIG``/the default.
        self.config_path = config_path
        #: ``--connector-option NAME.KEY=VALUE``: over the file's ``[connectors.NAME]``.
        self.connector_options = {k: dict(v) for k, v in (connector_options or {}).items()}
        self.log_path: str | None = None

    def url(self) -> str:
        from bagbot_core.db import database_url

        return database_url(self.database_url)


def hidden_url(url: str) -> str:
    """``url`` with its password masked and control characters escaped, for printing.

    :raises ConfigurationError: ``url`` is malformed (the message never quotes it).
    """
    from bagbot_core.db import parse_url

    return printable(parse_url(url).render_as_string(hide_password=True))


def audit_log_path(url: str) -> str:
    """Where the audit log goes without ``-v``: ``BAGBOT_LOG_FILE``, else beside the DB.

    For ``sqlite:///dir/name.db`` that is ``dir/name.audit.log``; for any other database,
    ``audit.log`` in bagbot's data directory.
    """
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from bagbot_core.db import default_database_path
    from bagbot_core.settings import Settings

    chosen = Settings.from_env(only=("log_file",)).log_file
    if chosen:
        return str(chosen)
    parsed = make_url(url)
    database = parsed.database
    if (parsed.get_backend_name() == "sqlite" and database and database != ":memory:"
            and not database.startswith("file:")):
        return str(Path(database).expanduser().with_suffix(".audit.log"))
    return str(default_database_path().parent / "audit.log")


def _setup_audit(settings: Settings, url: str) -> None:
    from pathlib import Path

    from bagbot_core import audit
    from bagbot_core.errors import ConfigurationError

    if settings.verbose:
        audit.configure(fmt="console", stream=sys.stderr, force=True)
        return
    path = audit_log_path(url)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        stream: TextIO = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
    except OSError as exc:
        raise ConfigurationError(f"cannot open the audit log {path}: {exc.strerror or exc} "
                                 "(set BAGBOT_LOG_FILE, or use -v to log to stderr)") from None
    try:
        audit.configure(stream=stream, force=True)
    except BaseException:  # e.g. BAGBOT_LOG_LEVEL=bogus
        stream.close()
        raise
    settings.log_path = path

    def close() -> None:  # nothing may log into a closed file afterwards
        audit.configure(stream=sys.__stderr__ or sys.stderr, force=True)
        stream.close()

    click.get_current_context().call_on_close(close)


def _open_db(settings: Settings) -> tuple[str, Any]:
    from bagbot_core.db import get_engine

    url = settings.url()
    return url, get_engine(url)


def _read(settings: Settings, work: Callable[[Session], T]) -> T:
    """Run ``work`` on a session of the database (no router, no event loop)."""
    from bagbot_core.db import session_factory

    _, engine = _open_db(settings)
    try:
        with session_factory(engine)() as session:
            return work(session)
    finally:
        engine.dispose()


def _with_router(settings: Settings, work: Callable[[Router, Session], Awaitable[T]]) -> T:
    """Run ``work`` in ``asyncio.run`` with the process router; always close the router."""
    import asyncio

    from bagbot_core.connector_config import merge_connector_config, read_connector_tables
    from bagbot_core.db import session_factory
    from bagbot_core.router import get_router

    url, engine = _open_db(settings)
    _setup_audit(settings, url)

    async def run() -> T:
        router = get_router()
        saved, saved_connectors = router.risk_config, router.connector_config
        if settings.config_path is not None:  # for this command only
            router.risk_config = saved.with_file(settings.config_path)
            router.connector_config = merge_connector_config(
                read_connector_tables(router.risk_config.path), saved_connectors)
        if settings.connector_options:  # over the file and the environment
            router.connector_config = merge_connector_config(
                router.connector_config, settings.connector_options)
        try:
            with session_factory(engine)() as session:
                return await work(router, session)
        finally:
            router.risk_config, router.connector_config = saved, saved_connectors
            await router.aclose()

    try:
        return asyncio.run(run())
    finally:
        engine.dispose()


# -- output ---------------------------------------------------------------------------------


def _cell(value: object, width: int | None = None) -> str:
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def _dec(value: Decimal | None) -> str:
    from bagbot_core.money import decimal_text

    text = decimal_text(value)
    return "-" if text is None else text


def _utc(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
                 right: frozenset[int] = frozenset()) -> str:
    """Plain aligned columns separated by two spaces; columns in ``right`` right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                 for i, c in enumerate(cells)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


ORDER_HEADERS = ("ID", "CREATED (UTC)", "USER", "CONNECTOR", "SYMBOL", "SIDE", "TYPE",
                 "AMOUNT", "PRICE", "FILLED", "AVG PRICE", "STATUS", "NET")
_ORDER_RIGHT = frozenset({0, 7, 8, 9, 10})


def order_row(view: OrderView) -> list[str]:
    return [
        str(view.id), _utc(view.created_at), _cell(view.user_id, 24), _cell(view.connector, 16),
        _cell(view.symbol), _cell(view.side), _cell(view.order_type), _dec(view.qty),
        _dec(view.price), _dec(view.filled_qty), _dec(view.avg_price), view.status.value,
        "test" if view.testnet else "LIVE",
    ]


def orders_table(views: Sequence[OrderView]) -> str:
    return format_table(ORDER_HEADERS, [order_row(v) for v in views], _ORDER_RIGHT)


def _json(data: object) -> str:
    return json.dumps(data, indent=2, default=str)


def _echo_orders(orders: Sequence[Order], as_json: bool, *, single: bool = False) -> None:
    views = [o.view() for o in orders]
    if as_json:
        click.echo(_json(views[0].as_dict() if single else [v.as_dict() for v in views]))
        return
    click.echo(orders_table(views))
    for view in views:
        if single and view.reason:
            click.echo(f"reason: {_cell(view.reason)}")


def _echo_order_details(order: Order) -> None:
    data = order.view().as_dict()
    width = max(len(k) for k in data)
    for key, value in data.items():
        if value is None:
            text = "-"
        elif isinstance(value, Mapping | list):
            text = json.dumps(value, sort_keys=True, default=str)
        else:
            text = str(value)
        click.echo(f"{key.ljust(width)}  {_cell(text)}")


# -- the commands ---------------------------------------------------------------------------


@click.group(name="bagbot", cls=BagbotGroup,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database-url", metavar="URL", default=None,
              help="SQLAlchemy URL of bagbot's database (overrides $BAGBOT_DATABASE_URL; "
                   "default: a SQLite file in ~/.local/share/bagbot).")
@click.option("--config", "config_path", metavar="PATH", default=None,
              help="Config file ([settings], [risk], [connectors.NAME]; TOML) for this "
                   "command (overrides $BAGBOT_CONFIG; default: "
                   "$XDG_CONFIG_HOME/bagbot/bagbot.toml if it exists).")
@click.option("--connector-option", "connector_options", metavar="NAME.KEY=VALUE",
              multiple=True,
              help="A connector config value for this command, e.g. "
                   "binance.enable_rate_limit=false (repeatable; over the config file's "
                   "[connectors.NAME] table and the environment).")
@click.option("-v", "--verbose", is_flag=True,
              help="Print the audit log to stderr instead of the log file.")
@click.version_option(package_name="bagbot-core", prog_name="bagbot")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, config_path: str | None,
        connector_options: tuple[str, ...], verbose: bool) -> None:
    """bagbot: route crypto orders through pluggable connectors and risk checks.

    Try it with no keys and no network: `bagbot demo` routes a few orders through the
    built-in `paper` exchange. The audit log goes to BAGBOT_LOG_FILE, else to a file next
    to the SQLite database (use -v to see it on stderr).
    """
    options: dict[str, dict[str, str]] = {}
    if connector_options:
        from bagbot_core.connector_config import parse_connector_options

        try:
            options = parse_connector_options(connector_options)
        except BagbotError as exc:
            raise click.BadParameter(str(exc), ctx, param_hint="'--connector-option'") from None
    ctx.obj = Settings(database_url, verbose, config_path, options)
    if config_path is not None:  # its [settings] table, until this command ends
        from bagbot_core.settings import using_config_file

        ctx.with_resource(using_config_file(config_path))


@cli.command(short_help="Route one order (testnet unless --live).")
@click.argument("symbol")
@click.argument("side", type=click.Choice(["buy", "sell"], case_sensitive=False))
@click.argument("amount", type=DECIMAL)
@click.option("--connector", default=DEFAULT_CONNECTOR, show_default=True,
              help="Connector (exchange) to route through.")
@click.option("--type", "order_type", type=click.Choice(["market", "limit"]),
              default="market", show_default=True)
@click.option("--price", type=DECIMAL, default=None, help="Limit price (limit orders only).")
@click.option("--user", default=_default_user, show_default="$BAGBOT_USER, $USER or 'cli'",
              help="User id the order is recorded under.")
@click.option("--client-order-id", default=None,
              help="Idempotency key: routing the same key again returns the first order.")
@click.option("--live", is_flag=True,
              help="Trade on the live exchange instead of its testnet (also needs "
                   "BAGBOT_ALLOW_LIVE=1).")
@click.option("--dry-run", is_flag=True,
              help="Run validation and every risk check only: print the violations, write "
                   "no row, send nothing (exit 1 when the order would be refused).")
@click.option("--json", "as_json", is_flag=True, help="Print the order as JSON.")
@click.pass_obj
def route(settings: Settings, symbol: str, side: str, amount: Decimal, connector: str,
          order_type: str, price: Decimal | None, user: str, client_order_id: str | None,
          live: bool, dry_run: bool, as_json: bool) -> None:
    """Route one order: AMOUNT of SYMBOL (e.g. BTC/USDT) to buy or sell.

    Runs every risk check, records the order, sends it (testnet unless --live) and prints
    it. Amounts and prices are exact decimals.
    """
    from bagbot_core.money import decimal_text

    if order_type == "limit" and price is None:
        raise click.UsageError("a limit order needs --price")
    if order_type == "market" and price is not None:
        raise click.UsageError("--price is only for limit orders (add --type limit)")
    payload: dict[str, Any] = {"symbol": symbol, "side": side.lower(), "type": order_type,
                               "amount": decimal_text(amount)}
    if price is not None:
        payload["price"] = decimal_text(price)
    if client_order_id is not None:
        payload["client_order_id"] = client_order_id
    if dry_run:
        _dry_run(settings, connector, payload, user, not live, as_json)
        return

    async def work(router: Router, session: Session) -> Order:
        return await router.route_order(connector, payload, session, user, testnet=not live)

    order = _with_router(settings, work)
    _echo_orders([order], as_json, single=True)
    if order.status in (OrderStatus.UNKNOWN, OrderStatus.PENDING):
        # A replayed idempotency key returns the first row as it is: still unresolved, it
        # gets the same exit code and warning as the call that left it so.
        unresolved = OrderStatusUnknownError(
            f"order {order.client_order_id} is {order.status}: it may be on {order.connector}")
        unresolved.order = order
        raise unresolved


def _dry_run(settings: Settings, connector: str, payload: dict[str, Any], user: str,
             testnet: bool, as_json: bool) -> None:
    """``route --dry-run``: :meth:`Router.check_order`, the violations on stdout."""
    from bagbot_core.risk import RiskViolation

    async def work(router: Router, session: Session) -> list[RiskViolation]:
        return await router.check_order(connector, payload, session, user, testnet=testnet)

    violations = _with_router(settings, work)
    if as_json:
        click.echo(_json({"dry_run": True, "passed": not violations,
                          "violations": [v.as_dict() for v in violations]}))
    elif not violations:
        click.echo("dry run: the order passes every risk check (nothing written, nothing sent)")
    else:
        click.echo(format_table(
            ("CHECK", "LIMIT", "ACTUAL", "REASON"),
            [[_cell(v.check), _cell(v.limit or "-"), _cell(v.actual or "-"), _cell(v.reason)]
             for v in violations]))
    if violations:
        raise click.ClickException(
            f"dry run: the order would be refused by {len(violations)} risk check(s): "
            + ", ".join(dict.fromkeys(v.check for v in violations)))


@cli.group()
def orders() -> None:
    """List, show, sync, cancel and reconcile recorded orders."""


@orders.command("list")
@click.option("--user", type=FILTER_TEXT, default=None, help="Only this user's orders.")
@click.option("--symbol", type=FILTER_TEXT, default=None,
              help="Only this symbol, e.g. BTC/USDT.")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice([s.value for s in OrderStatus]),
              help="Only these statuses (repeatable).")
@click.option("--connector", type=FILTER_TEXT, default=None, help="Only this connector.")
@click.option("--since", type=ISO_TIME, default=None,
              help="Created at or after this time (ISO 8601, UTC unless given).")
@click.option("--until", type=ISO_TIME, default=None, help="Created before this time.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_obj
def orders_list(settings: Settings, user: str | None, symbol: str | None,
                statuses: tuple[str, ...], connector: str | None, since: dt.datetime | None,
                until: dt.datetime | None, limit: int, offset: int, as_json: bool) -> None:
    """Orders matching every filter, newest first."""
    from bagbot_core import store

    def work(session: Session) -> list[Order]:
        return store.list_orders(session, user_id=user, symbol=symbol,
                                 status=list(statuses) or None, connector=connector,
                                 since=since, until=until, limit=limit, offset=offset)

    rows = _read(settings, work)
    if as_json:
        _echo_orders(rows, True)
    elif not rows:
        click.echo("no orders match" if offset == 0 else f"no orders past offset {offset}")
    else:
        _echo_orders(rows, False)
        if len(rows) == limit:
            click.echo(f"(showing {len(rows)}; next page: --offset {offset + limit})")


@orders.command("show")
@click.argument("order_id", metavar="ID", type=ORDER_ID)
@click.option("--json", "as_json", is_flag=True, help="Print the order as JSON.")
@click.pass_obj
def orders_show(settings: Settings, order_id: int, as_json: bool) -> None:
    """Every recorded field of one order."""
    from bagbot_core import store

    order = _read(settings, lambda session: store.get_order(session, order_id))
    if as_json:
        _echo_orders([order], True, single=True)
    else:
        _echo_order_details(order)


@orders.command("sync")
@click.argument("order_id", metavar="ID", type=ORDER_ID)
@click.option("--json", "as_json", is_flag=True, help="Print the order as JSON.")
@click.pass_obj
def orders_sync(settings: Settings, order_id: int, as_json: bool) -> None:
    """Ask the exchange for the order's status and fills, and record them."""

    async def work(router: Router, session: Session) -> Order:
        return await router.sync_order(session, order_id)

    _echo_orders([_with_router(settings, work)], as_json, single=True)


@orders.command("cancel")
@click.argument("order_id", metavar="ID", type=ORDER_ID)
@click.option("--json", "as_json", is_flag=True, help="Print the order as JSON.")
@click.pass_obj
def orders_cancel(settings: Settings, order_id: int, as_json: bool) -> None:
    """Cancel an open order on its exchange and record the result."""

    async def work(router: Router, session: Session) -> Order:
        return await router.cancel_order(session, order_id)

    _echo_orders([_with_router(settings, work)], as_json, single=True)


@orders.command("reconcile")
@click.option("--connector", required=True, type=FILTER_TEXT,
              help="Connector whose orders to resolve.")
@click.option("--grace", type=GRACE_SECONDS, default=None,
              help="Seconds an order must be old before one the exchange does not know is "
                   f"declared rejected (default {DEFAULT_RECONCILE_GRACE.total_seconds():g}; "
                   f"0 to {MAX_GRACE_SECONDS}).")
@click.option("--json", "as_json", is_flag=True, help="Print the changed orders as JSON.")
@click.pass_obj
def orders_reconcile(settings: Settings, connector: str, grace: float | None,
                     as_json: bool) -> None:
    """Resolve pending/unknown orders by asking the exchange; print what changed."""
    grace_delta = None if grace is None else dt.timedelta(seconds=grace)

    async def work(router: Router, session: Session) -> list[Order]:
        router.registry.connector_spec(connector)  # unknown name: a clear error, even if idle
        return await router.reconcile(session, connector, grace=grace_delta)

    changed = _with_router(settings, work)
    if as_json:
        _echo_orders(changed, True)
    elif not changed:
        click.echo(f"reconcile {connector}: no order changed")
    else:
        click.echo(f"reconcile {connector}: {len(changed)} order(s) changed")
        _echo_orders(changed, False)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def plugins(as_json: bool) -> None:
    """Loaded plugins: the distribution providing each, its connectors and risk checks."""
    from bagbot_core.plugins import PluginRegistry

    data = [info.as_dict() for info in PluginRegistry().plugin_infos()]
    if as_json:
        click.echo(_json(data))
        return
    rows = [[_cell(d["plugin"]), _cell(d["distribution"]), _cell(d["version"]),
             ", ".join(d["connectors"]) or "-", ", ".join(d["risk_checks"]) or "-"]
            for d in data]
    click.echo(format_table(("PLUGIN", "DISTRIBUTION", "VERSION", "CONNECTORS", "RISK CHECKS"),
                            rows))


@cli.command("new-plugin", short_help="Write a connector or risk-check plugin package.")
@click.argument("kind", type=click.Choice(["connector", "risk"]))
@click.argument("name")
@click.argument("directory", metavar="[DIR]", required=False, type=click.Path())
def new_plugin(kind: str, name: str, directory: str | None) -> None:
    """Write a plugin package: pyproject, module, tests and a noxfile that pass out of the box.

    NAME names the plugin, its connector or check, and the package bagbot_NAME. DIR
    (default ./bagbot-NAME) must not exist.
    """
    from pathlib import Path

    from bagbot_core.scaffold import new_plugin as write

    target = write(kind, name, Path(directory) if directory is not None else None)
    click.echo(f"wrote {kind} plugin {name} to {target}")
    click.echo(f"next: pip install -e '{target}[testing]' && pytest {target}")


@cli.group()
def risk() -> None:
    """Risk checks: their limits, where each comes from, trading states."""


@risk.command("show")
@click.option("--user", type=FILTER_TEXT, default=None,
              help="The limits as this user's orders see them.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def risk_show(settings: Settings, user: str | None, as_json: bool) -> None:
    """Every active risk check with its effective limit and the limit's source.

    Sources, highest first within a scope: code, env (MAX_ORDER_QTY ...), the config file
    (--config, $BAGBOT_CONFIG or the default location), default. Scopes, most specific
    first: symbol, connector, user, global.
    """
    from bagbot_core.plugins import PluginRegistry
    from bagbot_core.risk import parse_skip_list, resolve_skipped
    from bagbot_core.risk_config import RiskConfig, risk_report

    config = RiskConfig.load(settings.config_path)
    registry = PluginRegistry()
    names = [check.name for check in registry.risk_checks()]
    report = risk_report(config, registry, user_id=user,
                         skipped=resolve_skipped(parse_skip_list(None), names))
    if as_json:
        click.echo(_json(report))
        return
    rows, off, where, skipped = (report["checks"], report["off"], report["config_file"],
                                 report["skipped"])
    click.echo(format_table(
        ("CHECK", "LIMIT", "VALUE", "SCOPE", "SOURCE"),
        [[_cell(r["check"]) + (" (SKIPPED)" if r["skipped"] else ""), _cell(r["limit"] or "-"),
          _cell("off" if r["value"] is None and r["limit"] else r["value"] or "-"),
          _cell(r["scope"]), _cell(r["source"])] for r in rows]))
    click.echo(f"off (not configured): {', '.join(off) or '-'}")
    click.echo(f"config file: {_cell(where) if where else 'none'}")
    if skipped:
        click.echo(f"SKIPPED by BAGBOT_SKIP_RISK_CHECKS: {', '.join(sorted(skipped))}")


@cli.group()
def db() -> None:
    """The database: create its tables, upgrade its schema, show its URL."""


@db.command("init")
@click.pass_obj
def db_init(settings: Settings) -> None:
    """Create bagbot's tables (idempotent) and print the database URL."""
    from bagbot_core.db import get_engine, init_db

    url = settings.url()
    engine = get_engine(url, create_tables=False)
    try:
        init_db(engine)
    finally:
        engine.dispose()
    click.echo(f"initialized {hidden_url(url)}")


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target schema revision.")
@click.pass_obj
def db_upgrade(settings: Settings, revision: str) -> None:
    """Upgrade the database schema (back the database up first)."""
    from bagbot_core.db import get_engine
    from bagbot_core.migrate import upgrade

    url = settings.url()
    engine = get_engine(url, create_tables=False)
    try:
        before, after = upgrade(engine, revision)
    finally:
        engine.dispose()
    if before == after:
        click.echo(f"{hidden_url(url)} is already at schema revision {after}")
    else:
        click.echo(f"upgraded {hidden_url(url)} from {before or 'empty'} to {after}")


@db.command("url")
@click.pass_obj
def db_url(settings: Settings) -> None:
    """Print the database URL in use (password hidden)."""
    click.echo(hidden_url(settings.url()))


# -- demo -----------------------------------------------------------------------------------


async def _demo_steps(router: Router, session: Session, url: str, run_id: str
                      ) -> list[tuple[str, str, str, Order | None, bool]]:
    """Route the demo's orders; return (outcome, label, detail, row, as_expected) each."""
    from decimal import ROUND_DOWN

    from bagbot_core.db import sync_url
    from bagbot_core.money import decimal_text

    paper = await router.get_connector(DEFAULT_CONNECTOR, testnet=True,
                                       database_url=sync_url(url))
    quote = await paper.fetch_quote(DEMO_SYMBOL)
    bid = quote.bid if quote.bid is not None else Decimal(50000)
    resting_price = (bid * Decimal("0.9")).quantize(Decimal(1), rounding=ROUND_DOWN)
    too_much = router.limits.max_order_qty * 2
    steps: list[tuple[str, dict[str, str], str]] = [
        ("market buy", {"side": "buy", "type": "market", "amount": "0.002"}, "filled"),
        ("limit buy below the market",
         {"side": "buy", "type": "limit", "amount": "0.001",
          "price": decimal_text(resting_price) or ""}, "open"),
        ("market sell", {"side": "sell", "type": "market", "amount": "0.001"}, "filled"),
        ("market buy above MAX_ORDER_QTY",
         {"side": "buy", "type": "market", "amount": decimal_text(too_much) or ""}, "risk"),
    ]
    results: list[tuple[str, str, str, Order | None, bool]] = []
    for n, (label, fields, expected) in enumerate(steps, 1):
        payload = {"symbol": DEMO_SYMBOL, "client_order_id": f"demo-{run_id}-{n}", **fields}
        text = f"{label}: {fields['side']} {fields['amount']} {DEMO_SYMBOL}"
        if "price" in fields:
            text += f" @ {fields['price']}"
        try:
            order = await router.route_order(DEFAULT_CONNECTOR, payload, session, DEMO_USER)
        except BagbotError as exc:
            row = exc.order if getattr(exc, "order", None) is not None else None
            outcome = "unknown" if isinstance(exc, OrderStatusUnknownError) else "rejected"
            detail = _one_line(str(exc))
            if isinstance(exc, RiskCheckError):
                detail = "refused by risk checks: " + "; ".join(
                    v.describe() for v in exc.violations)
            results.append((outcome, text, detail, row, expected == "risk"
                            and isinstance(exc, RiskCheckError)))
            continue
        detail = order.status
        if order.status == OrderStatus.FILLED:
            detail = f"filled {_dec(order.filled_qty)} at {_dec(order.avg_price)}"
        elif order.status == OrderStatus.OPEN:
            detail = f"open: resting on the book at {_dec(order.price)}"
        results.append(("ok", text, detail, order, order.status == expected))
    return results


@cli.command()
@click.pass_obj
def demo(settings: Settings) -> None:
    """Route a few orders through the paper exchange and print them.

    A market buy, a limit buy that rests on the book, a market sell, and one order the
    risk checks refuse. Needs no configuration, keys or network; safe to run again.
    """
    import uuid

    run_id = uuid.uuid4().hex[:12]
    url = settings.url()

    async def work(router: Router, session: Session
                   ) -> list[tuple[str, str, str, Order | None, bool]]:
        return await _demo_steps(router, session, url, run_id)

    results = _with_router(settings, work)
    click.echo("bagbot demo: orders routed through the paper exchange (testnet; no keys, "
               "no network)")
    click.echo(f"database:  {hidden_url(url)}")
    click.echo(f"audit log: {settings.log_path or 'stderr'}")
    click.echo("")
    width = max(len(text) for _, text, _, _, _ in results)
    for outcome, text, detail, row, _ in results:
        where = f" (order {row.id})" if row is not None else ""
        click.echo(f"  {outcome:<8}  {text.ljust(width)}  ->  {detail}{where}")
    click.echo("")
    rows = [row for _, _, _, row, _ in results if row is not None]
    if rows:
        click.echo(orders_table([r.view() for r in rows]))
        click.echo("")
    resting = [r for r in rows if r.status == OrderStatus.OPEN]
    click.echo("next: bagbot orders list"
               + (f"   |   bagbot orders cancel {resting[0].id}" if resting else "")
               + "   |   bagbot plugins")
    unexpected = [text for _, text, _, _, ok in results if not ok]
    if unexpected:
        raise click.ClickException(
            f"demo: {len(unexpected)} step(s) did not go as expected: {'; '.join(unexpected)}")


def _copy_group(group: click.Group) -> click.Group:
    """``group`` with its own command tables (nested groups copied too), same commands."""
    copied = copy.copy(group)
    copied.commands = {name: _copy_group(command) if isinstance(command, click.Group)
                       else command for name, command in group.commands.items()}
    return copied


def cli_with_plugins(registry: PluginRegistry | None = None,
                     err: TextIO | None = None) -> click.Group:
    """A copy of :data:`cli` with the commands plugins add (``bagbot_register_commands``).

    :data:`cli` itself never changes, so a plugin can neither alter the core's commands
    for other callers nor break them: a plugin whose hook raises, or a registry that cannot
    load, is reported on ``err`` (stderr) as one ``warning:`` line and the rest works.

    :param registry: Whose plugins (default: the installed ones, as ``bagbot plugins``).
    """
    from bagbot_core.plugins import PluginRegistry

    group = _copy_group(cli)
    stream = err if err is not None else sys.stderr
    try:
        failures = (registry or PluginRegistry()).register_commands(group)
    except BagbotError as exc:  # the command that needs plugins reports it as an error
        click.echo(f"warning: plugin commands not loaded: {printable(_one_line(str(exc)))}",
                   file=stream)
        return group
    for provenance, failure in failures:
        reason = f"{type(failure).__name__}: {failure}"
        click.echo(f"warning: plugin {provenance.plugin!r} from {provenance.distribution} "
                   f"could not add its commands: {printable(_one_line(reason))}", file=stream)
    return group


def main(argv: Sequence[str] | None = None, *, group: click.Group | None = None) -> int:
    """The ``bagbot`` console script, with the plugins' commands; returns the exit code.

    :param group: The command line to run (default: :func:`cli_with_plugins`).
    """
    try:
        (group or cli_with_plugins()).main(args=list(argv) if argv is not None else None,
                                           prog_name="bagbot")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)


from bagbot_core.cli_serve import register as _register_serve  # noqa: E402 - needs cli
from bagbot_core.cli_soak import register as _register_soak  # noqa: E402 - needs cli
from bagbot_core.cli_state import register as _register_state  # noqa: E402 - needs cli
from bagbot_core.cli_tokens import register as _register_tokens  # noqa: E402 - needs cli

_register_state(cli)  # bagbot halt | reduce | resume, bagbot risk status
_register_soak(cli)  # bagbot soak: each connector plugin adds its own
_register_serve(cli)  # bagbot serve: the HTTP API
_register_tokens(cli)  # bagbot tokens create | list | revoke


if __name__ == "__main__":
    sys.exit(main())
