"""Alembic environment: always run on a connection handed over by :mod:`bagbot_core.migrate`."""

from __future__ import annotations

from alembic import context

from bagbot_core.models import Base
from bagbot_core.paper import models as _paper_models  # noqa: F401 - registers its tables

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
