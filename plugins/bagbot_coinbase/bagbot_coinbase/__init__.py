"""bagbot-coinbase: a Coinbase Advanced Trade connector for bagbot.

``route_order("coinbase", ...)`` places orders through it.

The plugin module (:mod:`bagbot_coinbase.plugin`) is what the ``bagbot`` entry point loads; it
does not import ccxt. The connector lives in :mod:`bagbot_coinbase.connector` and a fake
Advanced Trade server for tests in :mod:`bagbot_coinbase.testing`.
"""
