"""bagbot's settings in the environment, which command-line tests start without."""

from __future__ import annotations

#: The variables bagbot reads settings from that would change what a command does or
#: prints; a developer's shell may set any of them.
SETTINGS = (
    "BAGBOT_DATABASE_URL", "BAGBOT_LOG_FILE", "BAGBOT_LOG_FORMAT", "BAGBOT_LOG_LEVEL",
    "BAGBOT_ALLOW_LIVE", "BAGBOT_DISABLE_PLUGINS", "BAGBOT_TRACE_HOOKS", "BAGBOT_USER",
    "BAGBOT_SKIP_RISK_CHECKS", "BAGBOT_CONFIG",
    "MAX_ORDER_QTY", "MAX_ORDER_VALUE_USD", "MIN_ORDER_QTY",
)
