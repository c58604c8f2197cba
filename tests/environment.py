"""bagbot's settings in the environment, which command-line tests start without."""

from __future__ import annotations

#: The variables bagbot reads settings from that would change what a command does or
#: prints; a developer's shell may set any of them.
SETTINGS = (
    "BAGBOT_DATABASE_URL", "BAGBOT_LOG_FILE", "BAGBOT_LOG_FORMAT", "BAGBOT_LOG_LEVEL",
    "BAGBOT_ALLOW_LIVE", "BAGBOT_DISABLE_PLUGINS", "BAGBOT_TRACE_HOOKS", "BAGBOT_USER",
    "BAGBOT_SKIP_RISK_CHECKS", "BAGBOT_CONFIG",
    "BAGBOT_SERVICE_RATE_LIMIT", "BAGBOT_SERVICE_MAX_BODY", "BAGBOT_SERVICE_SHUTDOWN_GRACE",
    "BAGBOT_SERVICE_TIMEOUT", "BAGBOT_RECONCILE_INTERVAL",
    "MAX_ORDER_QTY", "MAX_ORDER_VALUE_USD", "MIN_ORDER_QTY",
)
