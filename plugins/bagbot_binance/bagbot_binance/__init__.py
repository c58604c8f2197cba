"""bagbot-binance: a Binance spot connector for bagbot (``route_order("binance", ...)``).

The plugin module (:mod:`bagbot_binance.plugin`) is what the ``bagbot`` entry point loads; it
does not import ccxt. The connector lives in :mod:`bagbot_binance.connector` and a fake
Binance server for tests in :mod:`bagbot_binance.testing`.
"""
