"""The built-in ``paper`` exchange: simulated trading in bagbot's own database.

``paper`` is registered like any third-party connector (through ``bagbot_add_connectors``
in :mod:`bagbot_core.paper.plugin`) and needs no keys and no network. Its book and balances
are tables next to the router's ``orders`` table (:mod:`bagbot_core.paper.models`), so
separate ``bagbot`` invocations share them. The fill, funds and idempotency rules are
documented in :mod:`bagbot_core.paper.connector`.
"""

from __future__ import annotations

from bagbot_core.paper.connector import (
    DEFAULT_BALANCES,
    DEFAULT_MARKETS,
    DEFAULT_SPREAD,
    PaperBalance,
    PaperConnector,
    PaperMarket,
)
from bagbot_core.paper.models import PaperBalanceRow, PaperOrderRow

__all__ = [
    "DEFAULT_BALANCES",
    "DEFAULT_MARKETS",
    "DEFAULT_SPREAD",
    "PaperBalance",
    "PaperBalanceRow",
    "PaperConnector",
    "PaperMarket",
    "PaperOrderRow",
]
