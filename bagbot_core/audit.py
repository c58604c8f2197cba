"""The structured audit log: one structlog event per routing step.

Every event is bound with ``user_id``, ``connector``, ``symbol``, ``client_order_id`` and
(once written) ``order_id``. Output is JSON lines when logging to a file or a pipe, readable
columns in a terminal (control characters shown escaped); ``BAGBOT_LOG_FORMAT=json|console``
forces one, ``BAGBOT_LOG_FILE`` appends to a file instead of stderr, ``BAGBOT_LOG_LEVEL``
filters (default ``info``). An unknown format or level is a configuration error.

Before rendering, :func:`redact` masks every value whose key looks like a credential and
every credential-looking fragment inside strings, wherever it is nested: an API secret that
reaches an event by accident still never reaches the log.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, TextIO

import structlog

from bagbot_core.errors import ConfigurationError
from bagbot_core.settings import LOG_FORMATS, LOG_LEVELS, Settings
from bagbot_core.terminal import printable

ENV_LOG_FORMAT = "BAGBOT_LOG_FORMAT"
ENV_LOG_FILE = "BAGBOT_LOG_FILE"
ENV_LOG_LEVEL = "BAGBOT_LOG_LEVEL"

LOGGER_NAME = "bagbot.audit"
REDACTED = "***"

_SENSITIVE_KEY = re.compile(
    r"(secret|password|passwd|passphrase|signature|api[_-]?key|apikey|private[_-]?key|token"
    r"|authorization|credential)",
    re.IGNORECASE,
)
# key=value / "key": "value" / X-MBX-APIKEY: value / Authorization: Basic value / Bearer
# tokens inside free text -- the one list of credential patterns in bagbot (signed query
# parameters and exchange auth headers included: ccxt_support.scrub_secrets builds on it).
_SENSITIVE_TEXT = re.compile(
    r"(?P<key>(?:secret|password|passwd|passphrase|signature|\bsign|api[_-]?key|apikey"
    r"|private[_-]?key|token|x-mbx-apikey|cb-access-sign|cb-access-key|authorization)"
    r"[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|digest)\s+)?)"
    r"(?P<value>[^\s\"'&,;}]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
# bagbot's own API tokens (bagbot_core.tokens), wherever they appear (a URL, a header, a
# body): the public id stays readable, the secret is masked.
_API_TOKEN = re.compile(r"(bgt_[a-z0-9]{12}_)[A-Za-z0-9_-]+", re.IGNORECASE)
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----",
                  re.DOTALL)
# Every pattern above needs one of these words: text without any of them (almost every value
# of almost every event) skips the three substitutions. Keep in step with the patterns.
_REDACT_HINT = re.compile(
    r"secret|passw|passphrase|sign|api[_-]?key|apikey|private[_-]?key|token"
    r"|cb-access-|bearer|authorization|-----BEGIN|bgt_",
    re.IGNORECASE,
)

_configured_lock = threading.Lock()
_configured = False
_known_secrets: set[str] = set()
#: Key name -> sensitive? Event keys are a small fixed set; the regex runs once per name.
_key_is_sensitive: dict[str, bool] = {}
#: Short strings already redacted -> result. Most event values repeat (the bound user id,
#: connector, symbol and client order id come with every event of an order); cleared when a
#: secret is added, so a value is never passed on unmasked after its secret became known.
_redacted_cache: dict[str, str] = {}
_CACHE_MAX_ITEMS = 4096
_CACHE_MAX_TEXT = 200


def add_known_secret(value: str) -> None:
    """Mask this exact value wherever it appears, whatever its surroundings.

    The router registers every credential in its connector config; connectors should
    register the ones they read from the environment. Values under 6 characters are
    ignored (masking them would shred ordinary text).
    """
    if isinstance(value, str) and len(value) >= 6 and value not in _known_secrets:
        _known_secrets.add(value)
        _redacted_cache.clear()


def is_sensitive_key(key: str) -> bool:
    sensitive = _key_is_sensitive.get(key)
    if sensitive is None:
        sensitive = bool(_SENSITIVE_KEY.search(key))
        if len(_key_is_sensitive) < 4096:
            _key_is_sensitive[key] = sensitive
    return sensitive


def redact_text(text: str) -> str:
    """Mask credential-looking fragments in free text (exception messages, URLs)."""
    cached = _redacted_cache.get(text)
    if cached is not None:
        return cached
    result = _redact_text(text)
    if len(text) <= _CACHE_MAX_TEXT:
        if len(_redacted_cache) >= _CACHE_MAX_ITEMS:
            _redacted_cache.clear()
        _redacted_cache[text] = result
    return result


def _redact_text(text: str) -> str:
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return redact_fragments(text)


def redact_fragments(text: str) -> str:
    """Mask credential-looking fragments by pattern alone: ``key=value`` and ``"key": value``
    pairs with a credential-ish key (``signature``, ``sign``, ``api_key``, ``token``...),
    auth headers (``X-MBX-APIKEY``, ``CB-ACCESS-*``, ``Authorization``), Bearer tokens,
    bagbot API tokens (``bgt_<id>_<secret>``: the secret) and PEM private keys.

    No known secrets and no cache: :func:`redact_text` adds both.
    """
    if not _REDACT_HINT.search(text):
        return text
    text = _PEM.sub(REDACTED, text)
    text = _API_TOKEN.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    return _SENSITIVE_TEXT.sub(lambda m: m.group("key") + REDACTED, text)


def _redact_value(key: str | None, value: Any, depth: int = 0) -> Any:
    if key is not None and is_sensitive_key(key) and value not in (None, ""):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float) or depth > 6:
        return value
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(None, v, depth + 1) for v in value]
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    return value


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: mask credentials anywhere in the event."""
    for key, value in event_dict.items():  # values replaced in place: no key is added
        kind = type(value)
        if kind is str:  # the common case, inlined: a known key, an already-seen value
            sensitive = _key_is_sensitive.get(key)
            if sensitive is None:
                sensitive = is_sensitive_key(key)
            if sensitive:
                if value:
                    event_dict[key] = REDACTED
            else:
                cached = _redacted_cache.get(value)
                event_dict[key] = cached if cached is not None else redact_text(value)
        elif (kind is not bool and value is not None) or is_sensitive_key(key):
            event_dict[key] = _redact_value(key, value)
    return event_dict


class _Stderr:
    """Whatever ``sys.stderr`` is when an event is written (test runners swap it)."""

    def write(self, text: str) -> int:
        return (sys.stderr or sys.__stderr__).write(text)  # type: ignore[union-attr]

    def flush(self) -> None:
        (sys.stderr or sys.__stderr__).flush()  # type: ignore[union-attr]

    def isatty(self) -> bool:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())


#: Pass as ``stream`` to log to the current standard error.
STDERR: Any = _Stderr()


class _SafeWriteLogger(structlog.WriteLogger):
    """A write logger whose failure (closed file, full disk) never breaks routing.

    The audit trail matters, but an order that reached the exchange must still be recorded
    in the database; a failed write goes to the process's original stderr instead.
    """

    def msg(self, message: str) -> None:
        pending = _batch.get()
        if pending is not None:  # written when the batch ends (see batch())
            pending.append((self, message))
            return
        self._write_lines(message)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg

    def _write_lines(self, text: str) -> None:
        """``text`` (one or more events, without the last newline): one write, one flush."""
        try:
            with self._lock:
                self._write(text + "\n")
                self._flush()
        except (OSError, ValueError) as exc:
            fallback = sys.__stderr__
            if fallback is not None:
                fallback.write(f"bagbot audit log write failed ({exc}): {text}\n")


_batch: contextvars.ContextVar[list[tuple[_SafeWriteLogger, str]] | None] = (
    contextvars.ContextVar("bagbot_audit_batch", default=None))


@contextlib.contextmanager
def batch() -> Iterator[None]:
    """Events logged inside the block are written when it ends, together: one write and one
    flush per stream instead of one per event (the same events, fields and redaction, in
    the same order). Every one is written and flushed when the block is left, even by an
    exception, so a block that ends before an order is sent leaves every event on disk
    before the send. A block inside another one writes with the outer one. For a burst of
    events with no wait in between (the router's ``risk_check`` events)."""
    if _batch.get() is not None:
        yield
        return
    pending: list[tuple[_SafeWriteLogger, str]] = []
    token = _batch.set(pending)
    try:
        yield
    finally:
        _batch.reset(token)
        streams: dict[int, tuple[_SafeWriteLogger, list[str]]] = {}
        for logger, message in pending:  # each stream's events in their order
            streams.setdefault(id(logger._file), (logger, []))[1].append(message)
        for logger, messages in streams.values():
            logger._write_lines("\n".join(messages))


def _json_fallback(value: Any) -> Any:
    """What structlog's JSON renderer writes for a value JSON cannot hold."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


# ``json.dumps(event, default=...)`` builds a new encoder on every call (about 1 µs of an
# event's 12); this one is built once and writes the same bytes.
_JSON_ENCODER = json.JSONEncoder(default=_json_fallback)


def _dumps(event_dict: Any, **_ignored: Any) -> str:
    return _JSON_ENCODER.encode(event_dict)


def escape_for_terminal(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]
                        ) -> Any:
    """structlog processor for console output: string values are shown escaped, so an
    escape sequence in a symbol or a reason is never obeyed by the terminal. (Other values
    are rendered with ``repr``, JSON escapes by itself.)"""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = printable(value, keep_newlines=key == "exception")
    return event_dict


def _setting(name: str, explicit: str | None, env: str, accepted: tuple[str, ...],
             default: str) -> str:
    """``explicit``, else the environment variable ``env``, else ``default``; either given
    value is refused with a :class:`ConfigurationError` unless one of ``accepted``."""
    chosen = default
    # The environment is checked even when ``explicit`` wins: a typo there is still a typo.
    field = {ENV_LOG_FORMAT: "log_format", ENV_LOG_LEVEL: "log_level"}[env]
    from_env = getattr(Settings.from_env(only=(field,)), field)
    for where, raw in ((env, from_env), (f"audit log {name}", explicit)):
        if raw is None or raw.strip() == "":
            continue
        chosen = raw.strip().lower()
        if chosen not in accepted:
            raise ConfigurationError(f"{where}={raw!r} is not a log {name}: use one of "
                                     f"{', '.join(accepted)}")
    return chosen


def _choose_stream() -> TextIO:
    path = Settings.from_env(only=("log_file",)).log_file
    if path:
        return open(path, "a", encoding="utf-8", buffering=1)
    return STDERR  # type: ignore[no-any-return]


def configure(
    *, fmt: str | None = None, stream: TextIO | None = None, level: str | None = None,
    force: bool = False,
) -> None:
    """Configure the audit logger once per process (idempotent unless ``force``).

    :param fmt: ``"json"`` or ``"console"``; default from ``BAGBOT_LOG_FORMAT``, else JSON
        unless the stream is a terminal.
    :param stream: where to write; default ``BAGBOT_LOG_FILE`` or stderr.
    :param level: minimum level name (:data:`LOG_LEVELS`); default ``BAGBOT_LOG_LEVEL`` or
        ``info``.
    :raises ConfigurationError: an unknown format or level, given or in the environment (a
        typo must not silently log at another level).
    """
    global _configured
    with _configured_lock:
        if _configured and not force:
            return
        # Settings first: a bad one is refused before any file is opened.
        chosen = _setting("format", fmt, ENV_LOG_FORMAT, LOG_FORMATS, "")
        level_name = _setting("level", level, ENV_LOG_LEVEL, LOG_LEVELS, "info").upper()
        out = stream or _choose_stream()
        if not chosen:
            chosen = "console" if getattr(out, "isatty", lambda: False)() else "json"
        renderer: list[Any]
        if chosen == "json":  # json.dumps escapes every control character itself
            renderer = [structlog.processors.JSONRenderer(_dumps)]
        else:
            renderer = [escape_for_terminal, structlog.dev.ConsoleRenderer(colors=False)]
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                redact,  # before the level and timestamp: structlog's own, never secret
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
                *renderer,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(
                logging.getLevelNamesMapping()[level_name]
            ),
            # WriteLogger: one write + flush per event, without print()'s extra work.
            logger_factory=lambda *_args: _SafeWriteLogger(file=out),
            cache_logger_on_first_use=True,
        )
        _configured = True


def get_logger(**bound: Any) -> Any:
    """The audit logger, configured on first use, with ``bound`` context."""
    if not _configured:
        configure()
    return structlog.get_logger(LOGGER_NAME).bind(**bound)
