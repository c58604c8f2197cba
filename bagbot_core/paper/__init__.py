"""The built-in ``paper`` exchange: simulated trading in bagbot's own database.

``paper`` is registered like any third-party connector (through ``bagbot_add_connectors``
in :mod:`bagbot_core.paper.plugin`) and needs no keys and no network. Its book and balances
are tables next to the router's ``orders`` table (:mod:`bagbot_core.paper.models`), so
separate ``bagbot`` invocations share them. The fill, funds and idempotency rules are
documented in :mod:`bagbot_core.paper.connector`.

Import from the submodules; this package stays empty so that loading the plugin (listing
plugins, ``bagbot --help``) does not import SQLAlchemy.
"""
