"""Typed per-connector configuration: the keys a connector reads, checked before it is used.

A connector declares its keys in :attr:`Connector.config_keys
<bagbot_core.connector.Connector.config_keys>` (build them with :func:`declare_config`).
The router checks a connector's config against them when it builds the connector: an
unknown key (a typo such as ``enable_rate_limt``) or a bad value is a
:class:`~bagbot_core.errors.ConfigurationError` naming the connector, the key and the value
-- never a secret's or a URL's, which may hold a credential. A connector that declares
nothing (``None``) accepts any key, as before; one whose class inherits the keys of its
base without declaring its own gets the base keys' value checks and may read more keys.

The configuration comes from three places; per key the first that sets it wins:

1. ``bagbot --connector-option NAME.KEY=VALUE`` (the command line, one command) -- or, in
   code, ``Router(connector_config=...)``;
2. the ``[connectors.NAME]`` tables of the config file (the one the risk engine reads:
   ``--config``, ``BAGBOT_CONFIG`` or ``~/.config/bagbot/bagbot.toml``);
3. the environment variables the connector itself reads for keys not given
   (:attr:`ConfigKey.env`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import attrs

from bagbot_core.connector import (
    MAX_CONFIG_SECONDS,
    config_bool,
    config_seconds,
    config_secret,
    http_base_url,
)
from bagbot_core.errors import ConfigurationError
from bagbot_core.money import parse_number_text
from bagbot_core.secrets import Secret
from bagbot_core.settings import BOOL_RULE, read_config_document

__all__ = [
    "CONFIG_KINDS",
    "ConfigKey",
    "check_connector_config",
    "declare_config",
    "merge_connector_config",
    "parse_connector_options",
    "read_connector_tables",
]

#: What a key may hold. ``text``: printable text; ``url``: an ``http(s)://`` base URL;
#: ``secret``: a credential (text or :class:`~bagbot_core.secrets.Secret`); ``bool``:
#: bagbot's one yes/no rule; ``seconds``: a duration (0 to a day); ``int``: a whole number
#: >= 0; ``decimal``: a finite number (exact); ``table``/``list``: structured values from the
#: config file or code (the connector checks their contents).
CONFIG_KINDS: Final = ("text", "url", "secret", "bool", "seconds", "int", "decimal", "table",
                       "list")


@attrs.frozen
class ConfigKey:
    """One key a connector reads from its config."""

    name: str
    kind: str = attrs.field(validator=attrs.validators.in_(CONFIG_KINDS))
    description: str = ""
    #: The environment variable the connector reads when the key is not given.
    env: str | None = None
    #: ``secret`` only: the value is a PEM key, line breaks allowed.
    multiline: bool = False


def declare_config(*keys: ConfigKey) -> Mapping[str, ConfigKey]:
    """``keys`` by name, for :attr:`Connector.config_keys`; a name given twice is an error."""
    declared: dict[str, ConfigKey] = {}
    for key in keys:
        if key.name in declared:
            raise ValueError(f"config key {key.name!r} declared twice")
        declared[key.name] = key
    return declared


def _shown(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, str):
        return ascii(value[:40])
    if isinstance(value, int | float | bool) or value is None:
        return repr(value)
    return f"a {type(value).__name__}"


def _check_value(label: str, key: ConfigKey, value: Any) -> None:
    """Parse ``value`` as ``key.kind`` with the helper the connectors use; raise if bad."""
    where = f"{label}: config key {key.name!r}"
    kind = key.kind
    if kind == "secret":
        if not isinstance(value, str | Secret):
            raise ConfigurationError(f"{where} must be text (the value is not shown: it is a "
                                     "credential)")
        try:
            config_secret({key.name: value}, key.name, "", multiline=key.multiline)
        except ConfigurationError:
            raise ConfigurationError(
                f"{where} contains a control character or other unprintable text (the value "
                "is not shown: it is a credential)") from None
        return
    if kind == "url":  # http_base_url never quotes the value: a URL may carry a credential
        http_base_url(value, where, allow_query=True)
        return
    rule = None
    try:
        if kind == "bool":
            rule = BOOL_RULE
            config_bool(value, where)
        elif kind == "seconds":
            rule = (f"a number of seconds from 0 to {MAX_CONFIG_SECONDS} written with ASCII "
                    "digits")
            config_seconds({key.name: value}, key.name, 0.0, label)
        rule = None
    except ConfigurationError:
        pass
    if kind == "text" and not (isinstance(value, str) and value.isprintable()):
        rule = "printable text"
    elif kind == "int" and not (
        (isinstance(value, int) and not isinstance(value, bool) and value >= 0)
        or (isinstance(value, str) and value.strip().isascii() and value.strip().isdigit())
    ):
        rule = "a whole number >= 0 written with ASCII digits"
    elif kind == "decimal":
        text = str(value) if isinstance(value, int | Decimal | str) else ""
        number = None if isinstance(value, bool) else parse_number_text(text)
        if number is None or not number.is_finite():
            rule = "a finite number written with ASCII digits"
    elif kind == "table" and not isinstance(value, Mapping):
        rule = "a table (set it in the config file or in code)"
    elif kind == "list" and (isinstance(value, str | bytes) or not isinstance(value, Sequence)):
        rule = "a list (set it in the config file or in code)"
    if rule is not None:
        raise ConfigurationError(f"{where} = {_shown(value)}: must be {rule}")


def check_connector_config(
    connector: str, keys: Mapping[str, ConfigKey] | None, config: Mapping[str, Any], *,
    allow_unknown: bool = False,
) -> None:
    """Refuse an unknown key or a bad value in ``config``; ``keys`` ``None`` accepts all.

    :param allow_unknown: check the declared keys' values only. The router sets it for a
        connector whose class inherits ``config_keys`` without declaring its own (a subclass
        of ``CcxtConnector`` written before keys were declared may read more keys).
    :raises ConfigurationError: naming the connector and the key, with a "did you mean"
        hint for an unknown key and the (escaped) value for a bad one -- never the value of
        a ``secret`` or ``url`` key.
    """
    if keys is None:
        return
    label = f"connector {connector!r}"
    for name, value in config.items():
        key = keys.get(str(name))
        if key is None:
            if allow_unknown:
                continue
            close = difflib.get_close_matches(str(name), list(keys), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = ", ".join(sorted(keys)) or "none"
            raise ConfigurationError(
                f"{label}: unknown config key {_shown(str(name))}{hint} (known: {known})")
        _check_value(label, key, value)


def merge_connector_config(
    *layers: Mapping[str, Mapping[str, Any]] | None,
) -> dict[str, dict[str, Any]]:
    """Per connector and key, the later layer over the earlier: pass lowest precedence first."""
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for name, config in (layer or {}).items():
            merged.setdefault(name, {}).update(config)
    return merged


def parse_connector_options(options: Iterable[str]) -> dict[str, dict[str, str]]:
    """``NAME.KEY=VALUE`` strings (``--connector-option``) as ``{NAME: {KEY: VALUE}}``.

    Values stay text: the connector's parsers read ``"false"`` or ``"2.5"`` like the typed
    values of the config file.

    :raises ConfigurationError: an option without ``.`` or ``=``, or with an empty part.
    """
    parsed: dict[str, dict[str, str]] = {}
    for option in options:
        target, eq, value = option.partition("=")
        name, dot, key = target.strip().partition(".")
        if not (eq and dot and name and key.strip()):
            raise ConfigurationError(
                f"connector option {_shown(target)}...: expected NAME.KEY=VALUE, e.g. "
                "binance.enable_rate_limit=false")
        parsed.setdefault(name, {})[key.strip()] = value
    return parsed


def read_connector_tables(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """The ``[connectors.NAME]`` tables of the config file ``path`` (``None``: no file).

    Numbers are read exactly (TOML decimals as :class:`~decimal.Decimal`).

    :raises ConfigurationError: naming the file: unreadable, not TOML, or ``connectors``
        (or one connector's entry) is not a table.
    """
    if path is None:
        return {}
    document = read_config_document(path)
    tables = document.get("connectors", {})
    if not isinstance(tables, Mapping):
        raise ConfigurationError(f"config file {path}: connectors must be a table of "
                                 "[connectors.NAME] tables")
    for name, table in tables.items():
        if not isinstance(table, Mapping):
            raise ConfigurationError(f"config file {path}: connectors.{name} must be a table "
                                     "([connectors.NAME] with KEY = VALUE lines)")
    return {str(name): dict(table) for name, table in tables.items()}
