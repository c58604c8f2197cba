"""The ``bagbot`` entry point of bagbot-binance: the ``binance`` connector and its soak.

Kept import-light on purpose: listing plugins must not import ccxt, so the connector module
is imported only when the factory runs (the first order routed to ``binance``), and the
fault soak (:mod:`bagbot_binance.soak`) only when ``bagbot soak --connector binance`` runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

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


@click.command(name="binance", add_help_option=False,
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
               short_help="Fault soak of the Binance connector against its fake server.")
@click.pass_context
def soak_binance(ctx: click.Context) -> None:
    """Fault soak of the Binance connector against its fake server (see --help)."""
    try:
        from bagbot_binance.soak import main
    except ImportError as exc:  # the fake server needs the testing extra (aiohttp)
        raise click.UsageError(f"the Binance soak needs bagbot-binance[testing] installed "
                               f"({exc})", ctx) from None
    ctx.exit(main(ctx.args, prog=f"{ctx.parent.command_path if ctx.parent else 'soak'} "
                                 "--connector binance"))


@hookimpl
def bagbot_register_commands(cli: click.Group) -> None:
    """Add ``bagbot soak --connector binance`` (the soak loads only when it runs)."""
    soak = cli.commands.get("soak")
    if isinstance(soak, click.Group):
        soak.add_command(soak_binance)
