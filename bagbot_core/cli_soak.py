"""``bagbot soak --connector NAME``: the fault soak of a connector, contributed by its plugin.

The core owns only the ``soak`` group; each connector plugin whose fake exchange can be
soaked adds a subcommand named after the connector through ``bagbot_register_commands``
(``cli.commands["soak"].add_command(command, "binance")``). So nothing in the core depends
on a plugin, and ``bagbot soak --help`` lists what the installed plugins offer.
``--connector NAME`` is the same as the subcommand ``NAME``; the subcommand's own options
follow it (``bagbot soak --connector binance -n 200``).

Imports only click: the soaks themselves load when they run.
"""

from __future__ import annotations

from typing import Any

import click

#: Said when no installed plugin contributes a soak.
NO_SOAK = ("no installed plugin contributes a fault soak; bagbot-binance provides "
           "'bagbot soak --connector binance' (pip install bagbot-binance)")


def connector_as_command(args: list[str]) -> list[str]:
    """``[..., "--connector", NAME, ...]`` (or ``--connector=NAME``) as ``[NAME, ...]``.

    Only before a ``--``; the first ``--connector`` wins, so a soak's own options pass
    through untouched.
    """
    end = args.index("--") if "--" in args else len(args)
    for i, arg in enumerate(args[:end]):
        if arg == "--connector" and i + 1 < end:
            return [args[i + 1], *args[:i], *args[i + 2:]]
        if arg.startswith("--connector="):
            return [arg.partition("=")[2], *args[:i], *args[i + 1:]]
    return args


class SoakGroup(click.Group):
    """The ``soak`` group: ``--connector NAME`` picks the soak a plugin contributed."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not self.commands and not any(a in ctx.help_option_names for a in args):
            raise click.UsageError(NO_SOAK, ctx)
        return super().parse_args(ctx, connector_as_command(list(args)))

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            available = ", ".join(sorted(self.commands)) or "none"
            raise click.UsageError(
                f"no fault soak for connector {name!r} (available: {available})", ctx)
        return super().resolve_command(ctx, args)


def soak_names(cli: click.Group) -> list[str]:
    """The connectors with a soak in ``cli`` (after plugins added their commands)."""
    group = cli.commands.get("soak")
    return sorted(group.commands) if isinstance(group, click.Group) else []


def register(cli: click.Group) -> None:
    """Attach the (empty) ``soak`` group to the root group."""

    @cli.group(cls=SoakGroup, name="soak",
               context_settings={"help_option_names": ["-h", "--help"]})
    def soak(**_: Any) -> None:
        """Fault soak of a connector against its fake exchange (nothing leaves 127.0.0.1).

        Routes many orders with injected faults, reconciles, and checks that nothing was
        lost or doubled. Use --connector NAME (or the subcommand NAME); each connector
        plugin that supports it adds its soak here. Exit 0 when every check passes, 1 when
        one fails, 2 on bad usage.
        """

    soak.params.append(click.Option(["--connector"], metavar="NAME", expose_value=False,
                                    help="The connector to soak (one of the commands "
                                         "below)."))
