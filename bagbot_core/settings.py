"""Reading settings (environment variables, connector config flags): one rule per kind.

Booleans: ``1``/``true``/``yes``/``on`` are true; ``0``/``false``/``no``/``off`` and the
empty string are false; case and surrounding whitespace do not matter. Anything else is a
:class:`~bagbot_core.errors.ConfigurationError` naming the setting: a typo in a safety switch
(``BAGBOT_ALLOW_LIVE=ture``) must be reported, not quietly read as one or the other.

Numbers: ASCII digits only (see :mod:`bagbot_core.money`); ``MAX_ORDER_QTY`` in
Arabic-Indic or full-width digits is refused.

The config file's ``[settings]`` table (:data:`FILE_KEYS`) sits between the environment and
the defaults: a deployment writes its settings down once, a shell can still override one.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs

from bagbot_core.errors import ConfigurationError
from bagbot_core.money import parse_setting

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})
#: The rule as users read it, for error messages and documentation.
BOOL_RULE = "1/true/yes/on or 0/false/no/off (any case; empty means false)"
_INT_RE = re.compile(r"[+-]?[0-9]{1,18}")


def parse_bool(value: object, name: str) -> bool:
    """``value`` as a boolean by the one rule above; a real ``bool`` is taken as is.

    :raises ConfigurationError: naming ``name`` for any other value (numbers included:
        ``2`` is not a yes).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        shown = ascii(value[:40])
    else:
        shown = f"a {type(value).__name__}"
    raise ConfigurationError(f"{name} must be {BOOL_RULE}, got {shown}")


def env_bool(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Environment variable ``name`` as a boolean; unset is false."""
    raw = (os.environ if environ is None else environ).get(name)
    return False if raw is None else parse_bool(raw, name)


def env_decimal(name: str, environ: Mapping[str, str] | None = None) -> Decimal | None:
    """Environment variable ``name`` as a positive, exact Decimal; unset or blank is ``None``.

    :raises ConfigurationError: naming ``name`` for anything but a finite, positive number
        written with ASCII digits.
    """
    raw = (os.environ if environ is None else environ).get(name)
    if raw is None or not raw.strip():
        return None
    return parse_setting(raw, name)


def parse_int_setting(value: str, name: str, *, minimum: int = 0) -> int:
    """A whole-number setting (e.g. a timeout in milliseconds): ASCII digits, at most 18.

    ``int()`` alone would read Arabic-Indic ``"\u0661\u0660"`` as 10, and ``"1_0"`` too.

    :raises ConfigurationError: naming ``name`` for anything else or a value below
        ``minimum``.
    """
    text = value.strip() if isinstance(value, str) else ""
    if not _INT_RE.fullmatch(text):
        raise ConfigurationError(
            f"{name} must be a whole number written with ASCII digits, got {ascii(value)[:40]}"
        )
    number = int(text)
    if number < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {number}")
    return number


# -- the environment as one typed object ----------------------------------------------------


@attrs.frozen
class SettingSpec:
    """One environment variable as documented: the README's Configuration table is
    :func:`markdown_table` of :data:`SPECS` (a test keeps the two equal)."""

    field: str
    name: str
    kind: str  # bool, decimal, int, path, text, names, choice
    type: str
    default: str
    meaning: str
    alias: str | None = None
    choices: tuple[str, ...] = ()
    noun: str = ""


LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_BUSY_TIMEOUT_MS = 30_000
_DIGITS = ("like every number setting, written with ASCII digits only "
           "(`\u0661\u0660` or `\uff11\uff10` is a configuration error)")

#: Every bagbot environment variable, in the order the README lists them.
SPECS: tuple[SettingSpec, ...] = (
    SettingSpec(
        "config_path", "BAGBOT_CONFIG", "path", "path",
        "`$XDG_CONFIG_HOME/bagbot/bagbot.toml` (`~/.config/...`) if it exists",
        "the config file (TOML): `[settings]` (below), `[risk]` (see [Risk controls]"
        "(#risk-controls)) and `[connectors.NAME]`; `bagbot --config PATH` overrides it for "
        "one command; a named file that does not exist is a configuration error"),
    SettingSpec(
        "database_url", "BAGBOT_DATABASE_URL", "text", "URL",
        "`sqlite:///~/.local/share/bagbot/bagbot.db`",
        "any SQLAlchemy URL; `postgresql+psycopg://...` for PostgreSQL"),
    SettingSpec(
        "max_order_qty", "BAGBOT_MAX_ORDER_QTY", "decimal", "decimal", "`10.0`",
        f"max quantity per order (inclusive); {_DIGITS}", alias="MAX_ORDER_QTY"),
    SettingSpec(
        "max_order_value_usd", "BAGBOT_MAX_ORDER_VALUE_USD", "decimal", "decimal",
        "`100000.0`", "max order value in USD (inclusive); USD stablecoin quotes count as "
        "USD; unvaluable orders are refused", alias="MAX_ORDER_VALUE_USD"),
    SettingSpec(
        "min_order_qty", "BAGBOT_MIN_ORDER_QTY", "decimal", "decimal", "`0.0001`",
        "min quantity per order (inclusive); above the maximum is a configuration error",
        alias="MIN_ORDER_QTY"),
    SettingSpec(
        "allow_live", "BAGBOT_ALLOW_LIVE", "bool", "boolean", "false",
        "true allows `testnet=False`; without it live orders are refused before anything is "
        "sent"),
    SettingSpec(
        "disable_plugins", "BAGBOT_DISABLE_PLUGINS", "names", "names", "none",
        "comma-separated plugin names not to load (`paper` included); `risk` is refused: use "
        "`BAGBOT_SKIP_RISK_CHECKS`"),
    SettingSpec(
        "skip_risk_checks", "BAGBOT_SKIP_RISK_CHECKS", "names", "names", "none",
        "comma-separated risk check names not to run, or `all` (`Router(skip_risk_checks=...)` "
        "in code); an unknown name is a configuration error; every order then logs a "
        "`risk_checks_bypassed` warning and records `details[\"risk_checks_skipped\"]`"),
    SettingSpec(
        "trace_hooks", "BAGBOT_TRACE_HOOKS", "bool", "boolean", "false",
        "true prints every hook call to stderr"),
    SettingSpec(
        "log_format", "BAGBOT_LOG_FORMAT", "choice", "`json` or `console`",
        "JSON, console on a terminal", "how audit events are written",
        choices=LOG_FORMATS, noun="log format"),
    SettingSpec(
        "log_file", "BAGBOT_LOG_FILE", "path", "path",
        "stderr (the CLI: `<database>.audit.log` next to a SQLite file; `-v` for stderr)",
        "append audit events to this file"),
    SettingSpec(
        "log_level", "BAGBOT_LOG_LEVEL", "choice", "`debug` ... `critical`", "`info`",
        "minimum level", choices=LOG_LEVELS, noun="log level"),
    SettingSpec(
        "sqlite_busy_timeout_ms", "BAGBOT_SQLITE_BUSY_TIMEOUT_MS", "int", "whole number",
        f"`{DEFAULT_BUSY_TIMEOUT_MS}`", "how long a SQLite writer waits for the lock, in ms"),
    SettingSpec(
        "group_commit", "BAGBOT_GROUP_COMMIT", "bool", "boolean", "true",
        "on a SQLite file, an order's `pending` row commits without its own disk flush and "
        "concurrent orders of the process wait for one shared flush before anything is sent "
        "(group commit); false: each row's commit flushes the disk itself"),
    SettingSpec(
        "user", "BAGBOT_USER", "text", "text", "`$USER`, else `cli`",
        "the user the CLI routes and lists orders for (`--user` overrides it)"),
    SettingSpec(
        "service_rate_limit", "BAGBOT_SERVICE_RATE_LIMIT", "int", "whole number", "`20`",
        "requests per second one API token may make to one `bagbot serve` process (bursts "
        "up to twice that; over it: 429); `0` turns the limit off"),
    SettingSpec(
        "service_max_body", "BAGBOT_SERVICE_MAX_BODY", "int", "whole number", "`65536`",
        "largest request body `bagbot serve` reads, in bytes (larger: 413)"),
    SettingSpec(
        "service_shutdown_grace", "BAGBOT_SERVICE_SHUTDOWN_GRACE", "int", "whole number",
        "`30`", "seconds `bagbot serve` lets requests in flight finish after SIGTERM; an "
        "order still in flight then is recorded `unknown` for reconcile"),
    SettingSpec(
        "service_timeout", "BAGBOT_SERVICE_TIMEOUT", "int", "whole number", "`10`",
        "seconds a client may take to send its request body to `bagbot serve` (slower: "
        "408)"),
    SettingSpec(
        "reconcile_interval", "BAGBOT_RECONCILE_INTERVAL", "int", "whole number", "`60`",
        "seconds between the rounds of `bagbot serve`'s background reconciler; `0` turns it "
        "off"),
)
_BY_FIELD = {spec.field: spec for spec in SPECS}


def _text(raw: str, name: str) -> str | None:
    if any(c == "\x00" or "\ud800" <= c <= "\udfff" for c in raw):
        # the value itself is not shown: a database URL may hold a password
        raise ConfigurationError(
            f"{name} contains NUL or bytes that are not UTF-8 text: write it in UTF-8")
    return raw.strip() or None


def _parse(spec: SettingSpec, raw: str, name: str) -> object:
    """``raw`` (set, maybe blank) by the rule of ``spec.kind``; ``None`` means not given."""
    if spec.kind == "bool":
        return parse_bool(raw, name)
    if spec.kind == "decimal":
        return parse_setting(raw, name) if raw.strip() else None
    if spec.kind == "int":
        return parse_int_setting(raw, name, minimum=0)
    if spec.kind == "names":
        return frozenset(item.strip() for item in raw.split(",") if item.strip())
    text = _text(raw, name)
    if spec.kind == "path":
        return None if text is None else Path(text).expanduser()
    if spec.kind == "choice" and text is not None:
        text = text.lower()
        if text not in spec.choices:
            raise ConfigurationError(f"{name}={raw!r} is not a {spec.noun}: use one of "
                                     f"{', '.join(spec.choices)}")
    return text


def _read(spec: SettingSpec, env: Mapping[str, str]) -> tuple[object, str | None]:
    """The value of ``spec`` and the variable it came from (``None``: not given).

    The ``BAGBOT_`` name and its seed alias may both be set only to the same value: two
    different limits for one control are a setup mistake, not a precedence question.
    """
    found = [(name, _parse(spec, env[name], name))
             for name in (spec.name, spec.alias) if name is not None and name in env]
    found = [(name, value) for name, value in found if value is not None]
    if not found:
        return None, None
    if len(found) == 2 and found[0][1] != found[1][1]:
        raise ConfigurationError(
            f"{spec.name}={env[spec.name].strip()!r} and its alias {spec.alias}="
            f"{env[spec.alias or ''].strip()!r} disagree: set only {spec.name}")
    return found[0][1], found[0][0]


# -- the config file's [settings] table ------------------------------------------------------

#: The config file's path below ``$XDG_CONFIG_HOME`` (default ``~/.config``).
DEFAULT_CONFIG_NAME = Path("bagbot") / "bagbot.toml"
#: Keys the file may not set, and why: these must be explicit where they take effect.
FILE_REFUSED: Mapping[str, str] = {
    "allow_live": "the live-trading opt-in must come from the environment (BAGBOT_ALLOW_LIVE)",
    "skip_risk_checks": "bypassing risk checks must be explicit in the environment "
                        "(BAGBOT_SKIP_RISK_CHECKS) or in code",
    "config": "the file cannot name itself (use --config or BAGBOT_CONFIG)",
    "config_path": "the file cannot name itself (use --config or BAGBOT_CONFIG)",
    "max_order_qty": "risk limits belong in the [risk] table",
    "max_order_value_usd": "risk limits belong in the [risk] table",
    "min_order_qty": "risk limits belong in the [risk] table",
}
#: The ``[settings]`` keys: a variable's lower-case name without ``BAGBOT_``.
FILE_KEYS: tuple[str, ...] = tuple(s.field for s in SPECS if s.field not in FILE_REFUSED)
_SECRET_FIELDS = frozenset({"database_url"})
#: ``bagbot --config PATH`` for the command being run (see :func:`using_config_file`).
_CONFIG_OVERRIDE: ContextVar[Path | None] = ContextVar("bagbot_config_file", default=None)
_FILE_CACHE: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/bagbot/bagbot.toml`` (``~/.config/bagbot/bagbot.toml``)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / DEFAULT_CONFIG_NAME


@contextlib.contextmanager
def using_config_file(path: str | Path | None) -> Iterator[None]:
    """Read settings from ``path`` instead of ``BAGBOT_CONFIG``/the default, inside the block
    (``bagbot --config PATH`` for one command); ``None`` changes nothing."""
    token = _CONFIG_OVERRIDE.set(None if path is None else Path(path).expanduser())
    try:
        yield
    finally:
        _CONFIG_OVERRIDE.reset(token)


def config_file(environ: Mapping[str, str]) -> Path | None:
    """The config file in effect: ``--config``, else ``BAGBOT_CONFIG``, else the default
    location if that file exists, else ``None``."""
    chosen = _CONFIG_OVERRIDE.get()
    if chosen is not None:
        return chosen
    named, _ = _read(_BY_FIELD["config_path"], environ)
    if isinstance(named, Path):
        return named
    candidate = default_config_path(environ)
    return candidate if candidate.is_file() else None


def read_config_document(path: str | Path) -> dict[str, Any]:
    """The whole config file as TOML, numbers exact (decimals as :class:`Decimal`).

    One reader for its three parts: ``[settings]`` here, ``[risk]`` in
    :mod:`bagbot_core.risk_config`, ``[connectors.NAME]`` in
    :mod:`bagbot_core.connector_config`.

    :raises ConfigurationError: naming the file: unreadable or not TOML.
    """
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle, parse_float=Decimal)
    except OSError as exc:
        raise ConfigurationError(
            f"config file {path}: cannot read it: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"config file {path}: not valid TOML: {exc}") from None


def file_settings(path: Path) -> dict[str, Any]:
    """The checked ``[settings]`` table of ``path`` (field -> value), cached by the file's
    modification time and size so reading it on every call stays cheap.

    :raises ConfigurationError: naming the file (and key): unreadable, not TOML, a refused
        or unknown key, a bad value (a database URL is never shown).
    """
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigurationError(
            f"config file {path}: cannot read it: {exc.strerror or exc}") from None
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _FILE_CACHE.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    document = read_config_document(path)
    table = document.get("settings", {})
    where = f"file {path} [settings]"
    if not isinstance(table, Mapping):
        raise ConfigurationError(f"file {path}: settings must be a table ([settings] with "
                                 "KEY = VALUE lines)")
    values = {key: _file_value(key, raw, where) for key, raw in table.items()}
    _FILE_CACHE[path] = (stamp, values)
    return values


def _file_value(key: str, raw: object, where: str) -> object:
    if key in FILE_REFUSED:
        raise ConfigurationError(f"{where}: {key} cannot be set in the config file: "
                                 f"{FILE_REFUSED[key]}")
    if key not in FILE_KEYS:
        raise ConfigurationError(f"{where}: unknown key {ascii(key)[:60]}; the keys are "
                                 f"{', '.join(FILE_KEYS)}")
    spec = _BY_FIELD[key]
    name = f"{where} {key}"
    if spec.kind == "names" and isinstance(raw, list) and all(isinstance(i, str) for i in raw):
        raw = ",".join(raw)
    elif spec.kind == "bool" and isinstance(raw, bool):
        return raw
    elif spec.kind == "int" and isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str):
        wanted = {"bool": "a boolean", "int": "a whole number",
                  "names": "a list of names"}.get(spec.kind, "a string")
        raise ConfigurationError(f"{name} must be {wanted}, got a TOML {type(raw).__name__}")
    if key in _SECRET_FIELDS:
        if not raw.strip():
            raise ConfigurationError(f"{name} is empty: remove the line or give a URL")
        return _text(raw, name)  # never shows the value
    value = _parse(spec, raw, name)
    if value is None:
        raise ConfigurationError(f"{name} is empty: remove the line or give a value")
    return value


@attrs.frozen
class Settings:
    """bagbot's environment variables (:data:`SPECS`), typed and checked.

    ``None`` (or an empty set, ``False``) means not given: the module that uses a setting
    owns its default. ``sources`` maps a given field to the variable it was read from (a
    seed alias such as ``MAX_ORDER_QTY`` included) or ``file PATH [settings]``.
    """

    config_path: Path | None = None
    database_url: str | None = attrs.field(default=None, repr=False)  # may hold a password
    max_order_qty: Decimal | None = None
    max_order_value_usd: Decimal | None = None
    min_order_qty: Decimal | None = None
    allow_live: bool = False
    disable_plugins: frozenset[str] = frozenset()
    skip_risk_checks: frozenset[str] = frozenset()
    trace_hooks: bool = False
    log_format: str | None = None
    log_file: Path | None = None
    log_level: str | None = None
    sqlite_busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
    group_commit: bool = True
    user: str | None = None
    service_rate_limit: int | None = None
    service_max_body: int | None = None
    service_shutdown_grace: int | None = None
    service_timeout: int | None = None
    reconcile_interval: int | None = None
    sources: Mapping[str, str] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *,
                 only: Iterable[str] | None = None) -> Settings:
        """Read ``environ`` (default ``os.environ``, read now: cheap, so call it where the
        value is used rather than caching it), then the config file's ``[settings]`` table
        (:func:`config_file`) for the fields the environment does not give.

        :param only: fields to read, the rest keep their defaults: a module reading one
            setting is not refused for a typo in another (that one fails where it is used).
        :raises ConfigurationError: naming the variable, for any malformed value.
        """
        env = os.environ if environ is None else environ
        fields = tuple(_BY_FIELD) if only is None else tuple(only)
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for field in fields:
            value, source = _read(_BY_FIELD[field], env)
            if source is not None:
                values[field], sources[field] = value, source
        if any(field in FILE_KEYS and field not in sources for field in fields):
            path = config_file(env)
            from_file = file_settings(path) if path is not None else {}
            for field in fields:
                if field in from_file and field not in sources:
                    values[field] = from_file[field]
                    sources[field] = f"file {path} [settings]"
        return cls(**values, sources=sources)


def markdown_table() -> str:
    """The README's Configuration table, from :data:`SPECS`."""
    lines = ["| variable | alias | type | default | what |", "|---|---|---|---|---|"]
    for spec in SPECS:
        alias = f"`{spec.alias}`" if spec.alias else ""
        lines.append(f"| `{spec.name}` | {alias} | {spec.type} | {spec.default} | "
                     f"{spec.meaning} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m bagbot_core.settings: print the README table
    print(markdown_table())
