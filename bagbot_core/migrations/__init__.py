"""Alembic migrations for bagbot's tables (``orders`` and the paper exchange's).

:data:`HEAD` is the revision this version of bagbot's models expects; :mod:`bagbot_core.db`
compares it with the database's ``alembic_version`` without importing Alembic, so only an
upgrade pays for Alembic.
"""

#: The newest revision; bump it together with each new file in ``versions/``.
HEAD = "0007"  # 0003: orders indexed for risk history; 0004: trading states; 0005: positions;
#                 0006: API tokens; 0007: notional buckets
