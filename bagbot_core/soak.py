"""``bagbot-soak``: the fault soak an installed connector plugin contributes.

The soak used to live here and drive Binance only; the core no longer depends on a plugin.
The exchange-agnostic engine is :mod:`bagbot_core.testing.soak`, and each connector plugin
adds ``bagbot soak --connector NAME`` (``bagbot-binance``: :mod:`bagbot_binance.soak`).
This console script is kept for compatibility: it runs ``bagbot soak`` with the only soak
installed (or the one ``--connector NAME`` names), and says which package provides one when
none is installed. The names this module held (``SoakConfig``, ``evaluate``, ``run_soak``
...) still import from here, from :mod:`bagbot_binance.soak`, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Sequence
from typing import Any

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2

#: Where the names that moved live now.
MOVED_TO = "bagbot_binance.soak"


def main(argv: Sequence[str] | None = None) -> int:
    """The ``bagbot-soak`` console script: ``bagbot soak [--connector NAME] ARGS``."""
    from bagbot_core.cli import cli_with_plugins
    from bagbot_core.cli import main as bagbot
    from bagbot_core.cli_soak import NO_SOAK, connector_as_command, soak_names

    args = list(sys.argv[1:] if argv is None else argv)
    group = cli_with_plugins()
    names = soak_names(group)
    if connector_as_command(args) == args:  # no --connector: the only soak installed
        if len(names) != 1:
            problem = NO_SOAK if not names else (
                f"several fault soaks are installed ({', '.join(names)}): choose one with "
                "--connector NAME")
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_USAGE
        args = ["--connector", names[0], *args]
    return bagbot(["soak", *args], group=group)


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        moved = importlib.import_module(MOVED_TO)
    except ImportError:
        raise AttributeError(
            f"bagbot_core.soak.{name} moved to {MOVED_TO} (pip install bagbot-binance); the "
            "exchange-agnostic soak is bagbot_core.testing.soak") from None
    if not hasattr(moved, name):
        raise AttributeError(f"module 'bagbot_core.soak' has no attribute {name!r}")
    warnings.warn(f"bagbot_core.soak.{name} moved to {MOVED_TO}.{name}", DeprecationWarning,
                  stacklevel=2)
    return getattr(moved, name)


if __name__ == "__main__":
    sys.exit(main())
