"""The ``bagbot`` entry point of bagbot-coinbase: registers the ``coinbase`` connector.

Kept import-light on purpose: listing plugins must not import ccxt, so the connector module
is imported only when the factory runs (the first order routed to ``coinbase``).
"""

from __future__ import annotations

from collections.abc import Sequence

from bagbot_core.plugin import Connector, ConnectorSettings, ConnectorSpec, hookimpl


def _make_coinbase(settings: ConnectorSettings) -> Connector:
    from bagbot_coinbase.connector import CoinbaseConnector

    return CoinbaseConnector(settings)


@hookimpl
def bagbot_add_connectors() -> Sequence[ConnectorSpec]:
    """Offer ``coinbase``: Coinbase Advanced Trade via ccxt, static sandbox unless live."""
    return [
        ConnectorSpec(
            "coinbase",
            _make_coinbase,
            "Coinbase Advanced Trade via ccxt (static sandbox by default; CDP key "
            "api_key/api_secret or BAGBOT_COINBASE_API_KEY/BAGBOT_COINBASE_API_SECRET)",
        )
    ]
