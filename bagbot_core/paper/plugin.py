"""Registers the ``paper`` connector through the same hook third-party plugins use."""

from __future__ import annotations

from collections.abc import Sequence

from bagbot_core.connector import Connector, ConnectorSettings, ConnectorSpec
from bagbot_core.markers import hookimpl


def make_paper_connector(settings: ConnectorSettings) -> Connector:
    """Factory for :class:`~bagbot_core.paper.connector.PaperConnector`."""
    from bagbot_core.paper.connector import PaperConnector

    return PaperConnector(settings)


@hookimpl
def bagbot_add_connectors() -> Sequence[ConnectorSpec]:
    return [
        ConnectorSpec(
            "paper",
            make_paper_connector,
            "Built-in simulated exchange: no keys, no network; book and balances live in "
            "bagbot's database.",
        )
    ]
