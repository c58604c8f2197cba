"""The web server's own log lines (uvicorn's access and error logs) pass the same redaction
as the audit log: a client that puts its token in a URL must not find it in the logs."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from bagbot_core.audit import redact_text

#: The loggers uvicorn writes to.
SERVER_LOGGERS = ("uvicorn", "uvicorn.access", "uvicorn.error")


class RedactingFilter(logging.Filter):
    """Masks credentials in a record's message and arguments before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_text(record.msg)
        if isinstance(record.args, Mapping):
            record.args = {k: _clean(v) for k, v in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(_clean(v) for v in record.args)
        return True


def _clean(value: object) -> object:
    return redact_text(value) if isinstance(value, str) else value


def install() -> None:
    """Add the filter to uvicorn's loggers (once per process)."""
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
