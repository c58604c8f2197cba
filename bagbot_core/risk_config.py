"""Risk limits from code, the environment, a TOML file and defaults, per scope.

One place answers "what is the limit for this order, and where did it come from?". A limit
can be set globally and per user, connector and symbol; the most specific scope that sets
it wins (symbol > connector > user > global). Within one scope the source decides:
code (``RiskConfig.load(overrides=...)``, ``Router(limits=...)``) > environment (the seed's
``MAX_ORDER_QTY``, ``MAX_ORDER_VALUE_USD``, ``MIN_ORDER_QTY``, global scope only) > the
file > the defaults. So a file's ``[risk.users.alice]`` refines a limit that code set
globally: code and environment give the defaults of a deployment, the file its exceptions.

The file (``--config PATH``, else ``BAGBOT_CONFIG``, else ``$XDG_CONFIG_HOME/bagbot/
bagbot.toml`` -- ``~/.config/bagbot/bagbot.toml`` -- when it exists)::

    [risk]                            # global
    max_order_qty = "10"
    price_collar_pct = "5"
    [risk.users.alice]
    daily_notional_usd = "1000"
    max_position = { BTC = "0.5" }   # per asset: the symbol's base
    [risk.connectors.binance]
    order_rate = 20
    [risk.symbols."BTC/USDT"]
    price_collar_pct = false          # this control off here

Numbers are written as TOML integers, TOML decimals (read exactly, never through float) or
strings of ASCII digits (:mod:`bagbot_core.money`); booleans follow
:mod:`bagbot_core.settings`. Every control except the seed's three quantity/value limits is
off until a scope sets it, and ``false`` switches it off again in a narrower scope. A bad
value or an unknown key is a :class:`ConfigurationError` naming the file, the key and the
value: a typo in a limit must stop the router, not leave the limit unset.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from bagbot_core.errors import ConfigurationError, OrderValidationError
from bagbot_core.money import decimal_text, parse_number_text, to_decimal
from bagbot_core.settings import (  # noqa: F401 - DEFAULT_CONFIG_NAME: kept import path
    BOOL_RULE,
    DEFAULT_CONFIG_NAME,
    Settings,
    default_config_path,
    parse_bool,
    read_config_document,
)

if TYPE_CHECKING:
    from bagbot_core.plugins import PluginRegistry
    from bagbot_core.risk import RiskLimits

#: Environment variable naming the config file.
ENV_CONFIG = "BAGBOT_CONFIG"
#: The scope tables inside ``[risk]``, most specific first.
SCOPES: Final = ("symbols", "connectors", "users")
_SCOPE_WORD = {"symbols": "symbol", "connectors": "connector", "users": "user"}
#: Longest window any control accepts: 366 days.
MAX_WINDOW_SECONDS = Decimal(366 * 24 * 3600)
_MAX_COUNT = 10**9


@attrs.frozen
class Limit:
    """An effective limit and where it came from.

    ``value`` is ``None`` for a control that is off. ``source`` is ``"code"``,
    ``"env MAX_ORDER_QTY"``, ``"file /x/bagbot.toml [risk.users.alice]"`` or ``"default"``
    (scoped code values say ``"code [risk.users.alice]"``).
    """

    value: Any
    source: str


@attrs.frozen
class LimitSpec:
    """One configurable value: its check, its kind and default.

    Kinds: ``decimal`` (finite, > 0), ``decimal0`` (finite, >= 0), ``count`` (whole number
    >= 0), ``seconds`` (> 0, at most :data:`MAX_WINDOW_SECONDS`), ``bool``, ``choice``.
    ``switch`` marks the value that turns its check on; it may be ``false`` (off) unless the
    check is always on (the seed's checks).
    """

    name: str
    check: str
    kind: str
    default: Any = None
    env: str | None = None
    choices: tuple[str, ...] = ()
    switch: bool = False
    per_asset: bool = False
    help: str = ""

    @property
    def can_switch_off(self) -> bool:
        return self.switch and self.default is None


SPECS: Final[Mapping[str, LimitSpec]] = {spec.name: spec for spec in (
    LimitSpec("max_order_qty", "max_quantity", "decimal", Decimal("10.0"),
              "BAGBOT_MAX_ORDER_QTY", switch=True, help="max quantity per order (inclusive)"),
    LimitSpec("max_order_value_usd", "max_value", "decimal", Decimal("100000.0"),
              "BAGBOT_MAX_ORDER_VALUE_USD", switch=True,
              help="max order value in USD (inclusive)"),
    LimitSpec("min_order_qty", "min_quantity", "decimal", Decimal("0.0001"),
              "BAGBOT_MIN_ORDER_QTY", switch=True, help="min quantity per order (inclusive)"),
    LimitSpec("price_collar_pct", "price_collar", "decimal0", switch=True,
              help="max % a limit price may be through the quote (inclusive)"),
    LimitSpec("duplicate_window_seconds", "duplicate_order", "seconds", switch=True,
              help="refuse the same order again within this many seconds (inclusive)"),
    LimitSpec("order_rate", "order_rate", "count", switch=True,
              help="max orders per window, this one included (inclusive)"),
    LimitSpec("order_rate_window_seconds", "order_rate", "seconds", Decimal(60),
              help="the order-rate window (rolling)"),
    LimitSpec("order_rate_per_connector", "order_rate", "bool", False,
              help="count the order's connector only"),
    LimitSpec("max_open_orders", "max_open_orders", "count", switch=True,
              help="max live orders, this one included (inclusive)"),
    LimitSpec("max_open_orders_per_symbol", "max_open_orders", "bool", False,
              help="count the order's symbol only"),
    LimitSpec("daily_notional_usd", "daily_notional", "decimal", switch=True,
              help="max USD notional per day, this order included (inclusive)"),
    LimitSpec("daily_notional_window", "daily_notional", "choice", "utc_day",
              choices=("utc_day", "rolling_24h"), help="the day: since 00:00 UTC or 24 h"),
    LimitSpec("max_position", "max_position", "decimal0", switch=True, per_asset=True,
              help="max net position per asset, live orders included (inclusive)"),
)}
#: The checks configured here, in the order ``bagbot risk show`` lists them.
CHECKS: Final = tuple(dict.fromkeys(spec.check for spec in SPECS.values()))


def spec_for(name: str) -> LimitSpec:
    """The spec of ``name``; ``max_position.BTC`` is ``max_position`` for asset BTC."""
    base, _, asset = name.partition(".")
    spec = SPECS.get(base)
    if spec is None or bool(asset) != spec.per_asset:
        raise KeyError(name)
    return spec


def _shown(value: object) -> str:
    if isinstance(value, Decimal):
        return decimal_text(value) or str(value)
    try:
        return ascii(value)[:60]
    except Exception:  # pragma: no cover - ascii() of plain TOML values does not raise
        return f"<{type(value).__name__}>"


def _bad(where: str, key: str, value: object, rule: str) -> ConfigurationError:
    return ConfigurationError(f"{where}: {key} = {_shown(value)}: {rule}")


def _decimal(value: object, where: str, key: str, *, zero_ok: bool) -> Decimal:
    rule = (f"must be a finite number {'>= 0' if zero_ok else '> 0'} written with ASCII "
            "digits (a TOML number or a string such as \"12.5\")")
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise _bad(where, key, value, rule)  # floats too: code passes Decimal or text
    number = parse_number_text(value) if isinstance(value, str) else Decimal(value)
    if number is None:
        raise _bad(where, key, value, rule)
    if zero_ok and number.is_finite() and number == 0:
        return Decimal(0)
    try:
        return to_decimal(number, key)
    except OrderValidationError as exc:
        raise _bad(where, key, value, f"{rule}; {exc}") from None


def _count(value: object, where: str, key: str) -> int:
    rule = "must be a whole number >= 0 written with ASCII digits"
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 18):
            raise _bad(where, key, value, rule)
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
        raise _bad(where, key, value, rule + f" (at most {_MAX_COUNT})")
    return value


def parse_value(spec: LimitSpec, value: object, where: str, key: str) -> Any:
    """``value`` as ``spec`` reads it; ``None`` for a control switched off with ``false``.

    :raises ConfigurationError: naming ``where`` (file and table), ``key`` and ``value``.
    """
    if spec.can_switch_off and value is False:
        return None
    if spec.kind in ("decimal", "decimal0"):
        return _decimal(value, where, key, zero_ok=spec.kind == "decimal0")
    if spec.kind == "count":
        return _count(value, where, key)
    if spec.kind == "seconds":
        seconds = _decimal(value, where, key, zero_ok=False)
        if seconds > MAX_WINDOW_SECONDS:
            raise _bad(where, key, value,
                       f"must be at most {decimal_text(MAX_WINDOW_SECONDS)} seconds (366 days)")
        return seconds
    if spec.kind == "bool":
        if not isinstance(value, bool | str):
            raise _bad(where, key, value, f"must be {BOOL_RULE}")
        try:
            return parse_bool(value, key)
        except ConfigurationError:
            raise _bad(where, key, value, f"must be {BOOL_RULE}") from None
    if spec.kind == "choice":
        if not isinstance(value, str) or value.strip().lower() not in spec.choices:
            raise _bad(where, key, value, f"must be one of {', '.join(spec.choices)}")
        return value.strip().lower()
    raise AssertionError(spec.kind)  # pragma: no cover


#: Scope key: ``None`` for global, else ``(table, key)`` e.g. ``("users", "alice")``.
Scope = tuple[str, str] | None


def scope_header(scope: Scope) -> str:
    if scope is None:
        return "[risk]"
    table, key = scope
    shown = key if key.replace("_", "").replace("-", "").isalnum() and key.isascii() else (
        '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return f"[risk.{table}.{shown}]"


@attrs.frozen
class _Layer:
    """One source's values: scope -> {name: value}; ``label`` prefixes each source."""

    label: str
    values: Mapping[Scope, Mapping[str, Any]]
    env_names: Mapping[str, str] = attrs.field(factory=dict)

    def source(self, scope: Scope, name: str) -> str:
        if self.label == "env":
            return f"env {self.env_names[name]}"
        if self.label == "code":
            return "code" if scope is None else f"code {scope_header(scope)}"
        return f"{self.label} {scope_header(scope)}"


def _parse_limits(table: Mapping[str, Any], where: str, out: dict[str, Any]) -> None:
    for key, value in table.items():
        spec = SPECS.get(key)
        if spec is None:
            raise ConfigurationError(
                f"{where}: unknown key {_shown(key)} = {_shown(value)} (known: "
                f"{', '.join(SPECS)}; tables: {', '.join(SCOPES)})")
        if spec.per_asset:
            if not isinstance(value, Mapping):
                raise _bad(where, key, value, "must be a table of asset = limit, e.g. "
                           "max_position = { BTC = \"0.5\" }")
            for asset, limit in value.items():
                if not isinstance(asset, str) or not asset.strip():
                    raise _bad(where, f"{key}.{_shown(asset)}", limit, "empty asset name")
                name = f"{key}.{asset.strip().upper()}"  # assets, like symbols, in any case
                if name in out:
                    raise _bad(where, f"{key}.{asset}", limit, f"{name} is set twice")
                out[name] = parse_value(spec, limit, where, f"{key}.{asset}")
        else:
            out[key] = parse_value(spec, value, where, key)


def _parse_risk(risk: Mapping[str, Any], label: str) -> dict[Scope, dict[str, Any]]:
    """The ``[risk]`` table (or code overrides of the same shape) as scope -> values."""
    values: dict[Scope, dict[str, Any]] = {None: {}}
    top = {k: v for k, v in risk.items() if k not in SCOPES}
    _parse_limits(top, f"{label} [risk]", values[None])
    for table in SCOPES:
        scoped = risk.get(table)
        if scoped is None:
            continue
        if not isinstance(scoped, Mapping):
            raise _bad(f"{label} [risk]", table, scoped,
                       f"must be a table of {_SCOPE_WORD[table]} = {{ limits }}")
        for key, limits in scoped.items():
            if not isinstance(key, str) or not key.strip():
                raise _bad(f"{label} [risk.{table}]", _shown(key), limits,
                           f"a {_SCOPE_WORD[table]} name must not be empty")
            # Symbols are upper case once parsed (``btc/usdt`` is ``BTC/USDT``).
            name = key.strip().upper() if table == "symbols" else key
            scope: Scope = (table, name)
            where = f"{label} {scope_header(scope)}"
            if scope in values:
                raise _bad(f"{label} [risk.{table}]", key, limits,
                           f"{_SCOPE_WORD[table]} {name} is set twice")
            if not isinstance(limits, Mapping):
                raise _bad(f"{label} [risk.{table}]", key, limits, "must be a table of limits")
            nested = sorted(set(limits).intersection(SCOPES))
            if nested:
                raise ConfigurationError(
                    f"{where}: unknown key {nested[0]!r}: scopes do not nest (a limit set "
                    "for a symbol applies to every user and connector)")
            _parse_limits(limits, where, values.setdefault(scope, {}))
    return values


def read_file(path: Path) -> dict[Scope, dict[str, Any]]:
    """Parse one config file.

    :raises ConfigurationError: naming the file: unreadable, not TOML (with the line),
        an unknown key or a bad value.
    """
    document = read_config_document(path)
    # [connectors.NAME] tables are read by bagbot_core.connector_config, [settings] by
    # bagbot_core.settings.
    unknown = sorted(set(document) - {"risk", "connectors", "settings"})
    if unknown:
        key = unknown[0]
        raise ConfigurationError(
            f"file {path}: unknown key {_shown(key)} = {_shown(document[key])} (the file "
            "holds a [settings] table, a [risk] table and [connectors.NAME] tables)")
    risk = document.get("risk", {})
    if not isinstance(risk, Mapping):
        raise _bad(f"file {path}", "risk", risk, "must be a table")
    return _parse_risk(risk, f"file {path}")


class RiskConfig:
    """Effective risk limits per user, connector and symbol, each with its source.

    Immutable; build it with :meth:`load`. ``limit()`` is a few dictionary lookups, cheap
    enough for every check of every order.
    """

    def __init__(self, layers: Iterable[_Layer] = (), *, path: Path | None = None) -> None:
        #: Highest precedence first: code, env, file.
        self.layers: tuple[_Layer, ...] = tuple(layers)
        #: The config file read, if any.
        self.path = path
        merged: dict[Scope, dict[str, Limit]] = {}
        for layer in reversed(self.layers):  # lower precedence first, overwritten after
            for scope, values in layer.values.items():
                target = merged.setdefault(scope, {})
                for name, value in values.items():
                    target[name] = Limit(value, layer.source(scope, name))
        self._scopes = merged
        self._global = merged.get(None, {})
        self._seed_limits: RiskLimits | None = None
        self._validate()

    # -- building -----------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path | None = None, *, environ: Mapping[str, str] | None = None,
             overrides: Mapping[str, Any] | None = None) -> RiskConfig:
        """Read the file, the seed's environment variables and ``overrides`` (code).

        ``path`` ``None``: ``BAGBOT_CONFIG`` if set, else the default location
        (:func:`default_config_path`) if that file exists, else no file. ``overrides`` has
        the shape of the file's ``[risk]`` table, e.g. ``{"order_rate": 10, "users":
        {"alice": {"daily_notional_usd": "1000"}}}``.

        :raises ConfigurationError: a named file that is missing or unreadable, a bad
            value or an unknown key (naming file, key and value), a minimum quantity above
            the maximum in any scope.
        """
        env = os.environ if environ is None else environ
        chosen: Path | None = None
        if path is not None:
            chosen = Path(path).expanduser()
        elif (named := Settings.from_env(env, only=("config_path",)).config_path) is not None:
            chosen = named
        else:
            candidate = default_config_path(env)
            if candidate.is_file():
                chosen = candidate
        layers = []
        if overrides:
            layers.append(_Layer("code", _parse_risk(overrides, "code")))
        layers.append(_env_layer(env))
        if chosen is not None:
            layers.append(_Layer(f"file {chosen}", read_file(chosen)))
        return cls(layers, path=chosen)

    def with_overrides(self, overrides: Mapping[str, Any]) -> RiskConfig:
        """A copy with ``overrides`` (``[risk]`` shape) added to the code layer."""
        code = _Layer("code", _parse_risk(overrides, "code"))
        rest = [layer for layer in self.layers if layer.label != "code"]
        old = next((layer for layer in self.layers if layer.label == "code"), None)
        if old is not None:
            values: dict[Scope, dict[str, Any]] = {s: dict(v) for s, v in old.values.items()}
            for scope, new in code.values.items():
                values.setdefault(scope, {}).update(new)
            code = _Layer("code", values)
        return RiskConfig([code, *rest], path=self.path)

    def with_file(self, path: str | Path) -> RiskConfig:
        """A copy reading ``path`` instead of its file (``bagbot --config``)."""
        chosen = Path(path).expanduser()
        keep = [layer for layer in self.layers if not layer.label.startswith("file ")]
        return RiskConfig([*keep, _Layer(f"file {chosen}", read_file(chosen))], path=chosen)

    # -- reading ------------------------------------------------------------------------

    def limit(self, name: str, *, user_id: str | None, connector: str | None,
              symbol: str | None) -> Limit:
        """The effective ``name`` for an order: most specific scope first.

        ``name`` is a key of :data:`SPECS`, or ``max_position.<ASSET>``. ``None`` for
        ``user_id``/``connector``/``symbol`` skips that scope.

        :raises KeyError: an unknown name.
        """
        scopes = self._scopes
        for table, key in (("symbols", symbol), ("connectors", connector), ("users", user_id)):
            if key is not None:
                values = scopes.get((table, key))
                if values is not None and name in values:
                    return values[name]
        found = self._global.get(name)
        if found is not None:
            return found
        return Limit(spec_for(name).default, "default")

    def seed_limits(self) -> RiskLimits:
        """The seed's three limits at global scope, as :class:`~bagbot_core.risk.RiskLimits`."""
        if self._seed_limits is None:
            from bagbot_core.risk import RiskLimits

            self._seed_limits = RiskLimits(**{
                name: self.limit(name, user_id=None, connector=None, symbol=None).value
                for name in ("max_order_qty", "max_order_value_usd", "min_order_qty")})
        return self._seed_limits

    def scopes(self) -> list[Scope]:
        """Every scope some layer sets, global first, then users, connectors, symbols."""
        order = {"users": 0, "connectors": 1, "symbols": 2}
        named = [s for s in self._scopes if s is not None]
        return [None, *sorted(named, key=lambda s: (order[s[0]], s[1]))]

    def names(self) -> list[str]:
        """Every limit name in use: the specs, plus ``max_position.<ASSET>`` set anywhere."""
        assets = sorted({n for values in self._scopes.values() for n in values if "." in n})
        return [n for n in SPECS if not SPECS[n].per_asset] + assets

    def describe(self, *, user_id: str | None = None) -> list[dict[str, Any]]:
        """Every active check's limits: global (or as ``user_id`` sees them) and overrides.

        One row per limit: ``check``, ``limit``, ``value`` (text; ``None``: off),
        ``scope`` (``"global"``, ``"user alice"``, ``"connector binance"``,
        ``"symbol BTC/USDT"``) and ``source``. A check appears in a scope when it is on
        there; its other settings are listed with it.
        """
        rows: list[dict[str, Any]] = []
        base = "global" if user_id is None else f"user {user_id}"
        rows += self._rows(base, user_id, None, None, only=None)
        for scope in self.scopes()[1:]:
            assert scope is not None
            table, key = scope
            if table == "users":  # with user_id, the first rows are that user's view
                if user_id is None:
                    rows += self._rows(f"user {key}", key, None, None, only=scope)
            elif table == "connectors":
                rows += self._rows(f"connector {key}", user_id, key, None, only=scope)
            elif table == "symbols":
                rows += self._rows(f"symbol {key}", user_id, None, key, only=scope)
        return rows

    def _rows(self, label: str, user_id: str | None, connector: str | None,
              symbol: str | None, *, only: Scope) -> list[dict[str, Any]]:
        """Rows of one scope; with ``only``, just the checks that scope sets something of."""
        set_here = set(self._scopes.get(only, {})) if only is not None else None
        rows = []
        for check in CHECKS:
            names = [n for n in self.names() if spec_for(n).check == check]
            if set_here is not None and not set_here.intersection(names):
                continue
            resolved = {n: self.limit(n, user_id=user_id, connector=connector, symbol=symbol)
                        for n in names}
            # A check is listed when it is on, or when this scope switches it off.
            switches = [n for n in names if spec_for(n).switch]
            shown = [n for n in switches if resolved[n].value is not None
                     or (set_here is not None and n in set_here)]
            if not shown:
                continue
            for name in names:
                if spec_for(name).switch and name not in shown:
                    continue
                limit = resolved[name]
                rows.append({"check": check, "limit": name, "value": _text(limit.value),
                             "scope": label, "source": limit.source})
        return rows

    # -- validation ---------------------------------------------------------------------

    def _validate(self) -> None:
        """Every combination of scopes must let some quantity pass (min <= max)."""
        axes: dict[str, list[str | None]] = {t: [None] for t in SCOPES}
        for scope in self._scopes:
            if scope is not None:
                axes[scope[0]].append(scope[1])
        for symbol, connector, user in itertools.product(
                axes["symbols"], axes["connectors"], axes["users"]):
            low = self.limit("min_order_qty", user_id=user, connector=connector, symbol=symbol)
            high = self.limit("max_order_qty", user_id=user, connector=connector, symbol=symbol)
            if low.value > high.value:
                raise ConfigurationError(
                    f"min_order_qty = {_text(low.value)} ({low.source}) is greater than "
                    f"max_order_qty = {_text(high.value)} ({high.source}): no order could pass "
                    "there; lower the one or raise the other")


def risk_report(config: RiskConfig, registry: PluginRegistry, *, user_id: str | None = None,
                skipped: Iterable[str] = ()) -> dict[str, Any]:
    """What ``bagbot risk show --json`` prints and ``GET /v1/risk`` returns as ``limits``.

    ``checks``: :meth:`RiskConfig.describe` plus every loaded check without a configurable
    limit (its source names its plugin), in the order the checks run, each with
    ``skipped``; ``off``: configurable checks no scope switches on; ``skipped``: the checks
    not run (``BAGBOT_SKIP_RISK_CHECKS``).
    """
    names = [check.name for check in registry.risk_checks()]
    skipped = set(skipped)
    rows = config.describe(user_id=user_id)
    configured = {row["check"] for row in rows}
    scope = "global" if user_id is None else f"user {user_id}"
    for info in registry.plugin_infos():  # checks without a configurable limit
        rows += [{"check": name, "limit": None, "value": None, "scope": scope,
                  "source": f"plugin {info.provenance.plugin} "
                            f"({info.provenance.distribution})"}
                 for name in info.risk_checks if name not in CHECKS]
    order = {name: i for i, name in enumerate(names)}
    rows.sort(key=lambda row: order.get(row["check"], len(order)))  # stable: scopes stay
    for row in rows:
        row["skipped"] = row["check"] in skipped
    off = [name for name in CHECKS if name in order and name not in configured]
    where = str(config.path) if config.path is not None else None
    return {"config_file": where, "user": user_id, "checks": rows, "off": off,
            "skipped": sorted(skipped)}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return decimal_text(value)
    return str(value)


def _env_layer(env: Mapping[str, str]) -> _Layer:
    """The limits' variables, read exactly as :meth:`RiskLimits.from_env` reads them (a
    source names the variable that was set: ``BAGBOT_MAX_ORDER_QTY`` or its alias)."""
    fields = [spec.name for spec in SPECS.values() if spec.env is not None]
    settings = Settings.from_env(env, only=fields)
    values = {field: getattr(settings, field) for field in settings.sources}
    return _Layer("env", {None: values}, dict(settings.sources))
