"""The ``bagbot`` entry point of bagbot-binance: registers the ``binance`` connector.

Kept import-light on purpose: listing plugins must not import ccxt, so the connector module
is imported only when the factory runs (the first order routed to ``binance``).
"""

from __future__ import annotations

from collections.abc import Sequence

from bagbot_core.plugin import Connector, ConnectorSettings, ConnectorSpec, hookimpl


def _make_binance(settings: ConnectorSettings) -> Connector:
    from bagbot_binance.connector import BinanceConnector

    return BinanceConnector(settings)


@hookimpl
def bagbot_add_connectors() -> Sequence[ConnectorSpec]:
    """Offer ``binance``: Binance spot via ccxt, testnet unless live trading is enabled."""
    return [
        ConnectorSpec(
            "binance",
            _make_binance,
            "Binance spot via ccxt (testnet by default; api_key/api_secret or "
            "BAGBOT_BINANCE_API_KEY/BAGBOT_BINANCE_API_SECRET)",
        )
    ]
