"""Hook specifications: the whole contract between bagbot and its plugins.

A plugin is a module (or object) with functions named after these hooks and decorated with
:data:`bagbot_core.hookimpl`. Installed distributions expose it through the ``bagbot``
entry-point group::

    [project.entry-points.bagbot]
    mycompany = "mycompany_bagbot.plugin"

An implementation may accept fewer arguments than the spec lists (pluggy passes only the
ones it names), so specs can gain arguments without breaking plugins. Hooks are synchronous;
I/O belongs on the :class:`~bagbot_core.connector.Connector` objects they return.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bagbot_core.markers import hookspec

if TYPE_CHECKING:
    import click

    from bagbot_core.connector import ConnectorSpec
    from bagbot_core.errors import BagbotError
    from bagbot_core.orders import OrderRequest
    from bagbot_core.risk import RiskCheck
    from bagbot_core.status import OrderStatus
    from bagbot_core.views import OrderView

# -------------------------------------------------------------------------
# Registration hooks: called once per registry, results cached.
# -------------------------------------------------------------------------


@hookspec
def bagbot_add_connectors() -> Sequence[ConnectorSpec]:
    """Return the exchange connectors this plugin provides.

    Called once, the first time the registry needs connectors (routing, ``bagbot plugins``).
    Keep it cheap: return :class:`~bagbot_core.connector.ConnectorSpec` objects whose
    factories import exchange libraries lazily. Listing plugins must not import ccxt.

    :return: Specs, each with a unique ``name``. Results of all plugins are combined; two
        plugins offering the same name is an error naming both distributions
        (:class:`~bagbot_core.errors.DuplicateNameError`).
    """


@hookspec
def bagbot_add_risk_checks() -> Sequence[RiskCheck]:
    """Return the pre-trade risk checks this plugin provides.

    Called once per registry. Every check of every plugin runs on every order, after the
    payload is validated and the connector's markets and reference quote are loaded, before
    anything is sent: inside the transaction that holds the user's lock and then writes the
    ``pending`` row, so ``ctx.history`` sees every earlier order of every process. A check
    may be ``async def``. All violations are collected; any violation rejects the order
    with :class:`~bagbot_core.errors.RiskCheckError`. A check that raises counts as a
    violation (fail closed).

    :return: :class:`~bagbot_core.risk.RiskCheck` objects with stable, unique names (a name
        used twice is a :class:`~bagbot_core.errors.DuplicateNameError`).
    """


@hookspec
def bagbot_register_commands(cli: click.Group) -> None:
    """Add commands to the ``bagbot`` command line (like datasette's ``register_commands``).

    Called once when the ``bagbot`` console script starts, before it parses its arguments,
    so keep it as cheap as ``bagbot --help`` must be: build the :mod:`click` commands here
    and import what they run (ccxt, SQLAlchemy, aiohttp) inside their callbacks. Add to
    ``cli`` with ``cli.add_command(...)``, or to one of its groups: a connector's fault soak
    goes under ``cli.commands["soak"]``, named after the connector (``bagbot soak
    --connector NAME``). Do not replace a command bagbot or another plugin added. An
    implementation that raises is reported on stderr with its distribution, and every
    other command still works.

    :param cli: The root ``bagbot`` group (a copy for this run: changes last one process).
    """


# -------------------------------------------------------------------------
# Order lifecycle notifications: return values are ignored.
#
# They run after the state they report is committed. An exception in a notification hook
# is logged as a ``hook_failed`` audit event and does not change the order or the result
# of the call: a broken alerting plugin must never make a placed order look failed.
# -------------------------------------------------------------------------


@hookspec
def bagbot_before_route(connector: str, user_id: str, order: OrderRequest) -> None:
    """A validated order is about to be risk-checked and routed.

    :param connector: The connector name the caller asked for.
    :param user_id: The caller's user id.
    :param order: The validated request (amounts already :class:`~decimal.Decimal`).
    """


@hookspec
def bagbot_after_route(order: OrderView) -> None:
    """``route_order`` placed an order and is about to return it.

    :param order: A frozen snapshot of the committed row (status ``open``, ``filled``, ...).
    """


@hookspec
def bagbot_on_route_error(order: OrderView | None, error: BagbotError) -> None:
    """``route_order`` is about to raise ``error``.

    :param order: Snapshot of the row recorded for the failure (``rejected`` or
        ``unknown``), or ``None`` when no row could be written (no user id, database down).
    :param error: The exception that will be raised to the caller right after this hook.
    """


@hookspec
def bagbot_order_status_changed(order: OrderView, old: OrderStatus, new: OrderStatus) -> None:
    """An order row's status changed and the change is committed.

    Called for every transition, from routing, sync, cancel and reconcile alike -- the one
    hook an alerting or metrics plugin needs.

    :param order: Snapshot after the change.
    :param old: The status before.
    :param new: The status now (``order.status``).
    """
