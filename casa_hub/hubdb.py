"""The hub's SQLite database in write-ahead-log mode.

JupyterHub talks to its database synchronously, on its event loop. With SQLite's default rollback journal every
commit waits for an fsync of the database file, and a login plus a spawn commits a dozen times: in a login
storm those waits are most of the hub's event-loop stalls (measured in benchmarks/bench_storm.py). In WAL mode
with ``synchronous=NORMAL`` a commit appends to the log and fsyncs only at checkpoints. A crash of the hub
loses nothing; a power loss may lose the last commits, never the database.

Call :func:`use_sqlite_wal` from ``jupyterhub_config.py`` (the facility and the Z2JH values do); it affects only
SQLite connections opened afterwards, in this process.
"""

from __future__ import annotations

import sqlite3


def _set_wal(dbapi_connection, _record) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()


def use_sqlite_wal() -> None:
    """Open every SQLite connection of this process in WAL mode with ``synchronous=NORMAL`` (idempotent)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", _set_wal):
        event.listen(Engine, "connect", _set_wal)
