"""Alembic environment: one URL from the caller's config (the node or alembic.ini), opened
through the same engine factory as the node's, on SQLite or PostgreSQL.

On SQLite, foreign keys are off while migrations run: a batch migration (the only way SQLite
alters a column) copies a table, drops the old one and renames the copy, and with foreign keys
on, dropping `calls` would cascade into `segments` and delete every transcript. The keys are
checked once the migrations are done instead.
"""

from __future__ import annotations

import logging.config
import os

from alembic import context

from service.store.db import make_engine
from service.store.models import Base
from service.store.search import include_name

config = context.config
if config.config_file_name and config.attributes.get("configure_logger", True):
    logging.config.fileConfig(config.config_file_name)

target_metadata = Base.metadata


def database_url() -> str:
    """The caller's URL; run by hand from alembic.ini, IM_DATABASE_URL wins over the file's
    default, so `IM_DATABASE_URL=postgresql+psycopg://... alembic upgrade head` does what
    it says and migrates the database the node would use."""
    if config.config_file_name and os.environ.get("IM_DATABASE_URL"):
        return os.environ["IM_DATABASE_URL"]
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("no sqlalchemy.url: run migrations through service.store.db.upgrade")
    return url


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        include_name=include_name,  # the search index is per backend, not in the models
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(database_url())
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        if sqlite:
            # Only takes effect outside a transaction, hence the commit before Alembic's own.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        # render_as_batch lets later migrations alter columns on SQLite (copy-and-move).
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,
            include_name=include_name,  # the search index is per backend, not in the models
        )
        with context.begin_transaction():
            context.run_migrations()
        if sqlite:
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            connection.rollback()
            if broken:
                raise RuntimeError(f"migrations left rows with broken foreign keys: {broken[:5]}")
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
