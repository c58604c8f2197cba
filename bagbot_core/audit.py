"""The structured audit log: one structlog event per routing step.

Every event is bound with ``user_id``, ``connector``, ``symbol``, ``client_order_id`` and
(once written) ``order_id``. Output is JSON lines when logging to a file or a pipe, readable
columns in a terminal; ``BAGBOT_LOG_FORMAT=json|console`` forces one, ``BAGBOT_LOG_FILE``
appends to a file instead of stderr, ``BAGBOT_LOG_LEVEL`` filters (default ``info``).

Before rendering, :func:`redact` masks every value whose key looks like a credential and
every credential-looking fragment inside strings, wherever it is nested: an API secret that
reaches an event by accident still never reaches the log.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

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
# key=value / "key": "value" / X-MBX-APIKEY: value / Bearer tokens inside free text.
_SENSITIVE_TEXT = re.compile(
    r"(?P<key>(?:secret|password|passwd|passphrase|signature|api[_-]?key|apikey|private[_-]?key"
    r"|token|x-mbx-apikey|cb-access-sign|cb-access-key)[\"']?\s*[:=]\s*[\"']?)"
    r"(?P<value>[^\s\"'&,;}]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----",
                  re.DOTALL)

_configured_lock = threading.Lock()
_configured = False
_known_secrets: set[str] = set()


def add_known_secret(value: str) -> None:
    """Mask this exact value wherever it appears, whatever its surroundings.

    The router registers every credential in its connector config; connectors should
    register the ones they read from the environment. Values under 6 characters are
    ignored (masking them would shred ordinary text).
    """
    if isinstance(value, str) and len(value) >= 6:
        _known_secrets.add(value)


def is_sensitive_key(key: str) -> bool:
    return bool(_SENSITIVE_KEY.search(key))


def redact_text(text: str) -> str:
    """Mask credential-looking fragments in free text (exception messages, URLs)."""
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _PEM.sub(REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    return _SENSITIVE_TEXT.sub(lambda m: m.group("key") + REDACTED, text)


def _redact_value(key: str | None, value: Any, depth: int = 0) -> Any:
    if key is not None and _SENSITIVE_KEY.search(key) and value not in (None, ""):
        return REDACTED
    if depth > 6:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(None, v, depth + 1) for v in value]
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    return value


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: mask credentials anywhere in the event."""
    for key in list(event_dict):
        event_dict[key] = _redact_value(key, event_dict[key])
    return event_dict


def _choose_stream() -> TextIO:
    path = os.environ.get(ENV_LOG_FILE)
    if path:
        return open(path, "a", encoding="utf-8", buffering=1)
    return sys.stderr


def configure(
    *, fmt: str | None = None, stream: TextIO | None = None, level: str | None = None,
    force: bool = False,
) -> None:
    """Configure the audit logger once per process (idempotent unless ``force``).

    :param fmt: ``"json"`` or ``"console"``; default from ``BAGBOT_LOG_FORMAT``, else JSON
        unless the stream is a terminal.
    :param stream: where to write; default ``BAGBOT_LOG_FILE`` or stderr.
    :param level: minimum level name; default ``BAGBOT_LOG_LEVEL`` or ``info``.
    """
    global _configured
    with _configured_lock:
        if _configured and not force:
            return
        out = stream or _choose_stream()
        chosen = (fmt or os.environ.get(ENV_LOG_FORMAT) or "").lower()
        if chosen not in ("json", "console"):
            chosen = "console" if getattr(out, "isatty", lambda: False)() else "json"
        level_name = (level or os.environ.get(ENV_LOG_LEVEL) or "info").upper()
        renderer: Any
        if chosen == "json":
            renderer = structlog.processors.JSONRenderer(sort_keys=False)
        else:
            renderer = structlog.dev.ConsoleRenderer(colors=False)
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                redact,
                structlog.processors.format_exc_info,
                renderer,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(
                logging.getLevelNamesMapping().get(level_name, logging.INFO)
            ),
            logger_factory=structlog.PrintLoggerFactory(file=out),
            cache_logger_on_first_use=True,
        )
        _configured = True


def get_logger(**bound: Any) -> Any:
    """The audit logger, configured on first use, with ``bound`` context."""
    if not _configured:
        configure()
    return structlog.get_logger(LOGGER_NAME).bind(**bound)
