"""How old an unresolved order must be before reconcile may declare it lost.

Its own module, free of heavy imports, so ``bagbot orders reconcile --help`` can show the
default the router really uses without loading SQLAlchemy.
"""

from __future__ import annotations

import datetime as dt

#: How long a ``pending``/``unknown`` row must be old before reconcile may call it lost.
DEFAULT_RECONCILE_GRACE = dt.timedelta(seconds=180)
