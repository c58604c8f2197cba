"""The service's settings: the ``BAGBOT_SERVICE_*`` variables and the reconcile interval.

They are ordinary bagbot settings (:data:`bagbot_core.settings.SPECS`: the environment, then
the config file's ``[settings]`` table); this module owns their defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from bagbot_core.errors import ConfigurationError
from bagbot_core.settings import Settings

DEFAULT_RATE_LIMIT = 20
DEFAULT_MAX_BODY = 65_536
DEFAULT_SHUTDOWN_GRACE = 30
DEFAULT_TIMEOUT = 10
DEFAULT_RECONCILE_INTERVAL = 60
#: Seconds an idle keep-alive connection stays open.
KEEP_ALIVE_SECONDS = 5
#: Most bytes of a request line and headers still incomplete that are buffered.
MAX_HEADER_BYTES = 16 * 1024

_FIELDS = ("service_rate_limit", "service_max_body", "service_shutdown_grace",
           "service_timeout", "reconcile_interval")


@attrs.frozen
class ServiceSettings:
    """How one ``bagbot serve`` process behaves.

    :param rate_limit: requests per second per token (bursts up to twice that); 0: off.
    :param max_body: largest request body read, in bytes.
    :param shutdown_grace: seconds requests in flight may take to finish after SIGTERM.
    :param timeout: seconds a client may take to send its request body.
    :param reconcile_interval: seconds between background reconcile rounds; 0: off.
    """

    rate_limit: int = DEFAULT_RATE_LIMIT
    max_body: int = DEFAULT_MAX_BODY
    shutdown_grace: int = DEFAULT_SHUTDOWN_GRACE
    timeout: int = DEFAULT_TIMEOUT
    reconcile_interval: int = DEFAULT_RECONCILE_INTERVAL

    def uvicorn_options(self) -> dict[str, Any]:
        """uvicorn's settings for the service: after SIGTERM, requests in flight get the
        grace; an idle keep-alive connection is closed after a few seconds; at most 16 KiB
        of incomplete headers are buffered."""
        return {"timeout_graceful_shutdown": self.shutdown_grace,
                "timeout_keep_alive": KEEP_ALIVE_SECONDS,
                "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
                "server_header": False}

    @property
    def burst(self) -> int:
        """How many requests a token may make at once before the rate applies."""
        return 2 * self.rate_limit

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServiceSettings:
        """Read the environment (default ``os.environ``) and the config file.

        :raises ConfigurationError: naming the variable, for a malformed value.
        """
        read = Settings.from_env(environ, only=_FIELDS)
        given = {
            "rate_limit": read.service_rate_limit, "max_body": read.service_max_body,
            "shutdown_grace": read.service_shutdown_grace, "timeout": read.service_timeout,
            "reconcile_interval": read.reconcile_interval,
        }
        settings = cls(**{key: value for key, value in given.items() if value is not None})
        for name, value in (("BAGBOT_SERVICE_MAX_BODY", settings.max_body),
                            ("BAGBOT_SERVICE_TIMEOUT", settings.timeout)):
            if value < 1:  # 0 would refuse every body
                raise ConfigurationError(f"{name} must be >= 1, got {value}")
        return settings
