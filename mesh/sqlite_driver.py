"""SQLAlchemy's aiosqlite adapter, with one trip to SQLite's thread per statement.

An aiosqlite connection is a thread of its own: every call on it is queued
to that thread and its answer handed back to the event loop. SQLAlchemy's
adapter makes one such trip for each step of a statement — open a cursor,
execute, fetch the rows, close the cursor (four for a query, three for a
write) — and one more for the rollback that resets every connection
returned to the pool, even when nothing is open to roll back. In the
runtime's short turns these hand-offs were about 8% of its CPU
(docs/BENCHMARKS.md).

:class:`Dbapi` is that adapter with two changes, passed to SQLAlchemy as
the dialect's ``module`` (:func:`mesh.database.create_engine` does):

- a statement is one function run on SQLite's thread: it opens a cursor,
  executes, fetches every row (what the adapter did anyway: it buffers
  whole results), reads the description, row count and last row id, and
  closes the cursor; the cursor SQLAlchemy holds keeps those answers;
- ``commit`` and ``rollback`` stay on the event loop when the connection
  has no transaction open (``sqlite3.Connection.in_transaction``), where
  the sqlite3 module's own would do nothing.

A third: :meth:`Connection.run_here` runs a synchronous function on
SQLite's thread and commits, and the statements the function executes there
(through SQLAlchemy's synchronous connection, :func:`mesh.database.transact`)
run at once, without a trip each: a transaction of several statements and
its commit are one trip, and no greenlet is spawned per statement.

Everything else (server-side cursors, errors, closing, terminating) is the
adapter's own.
"""

from __future__ import annotations

import collections
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

import aiosqlite
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_connection
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT, await_

_Answer = tuple[Any, int, int | None, Sequence[Any]]

_here = threading.local()
"""``inline`` is true on a SQLite thread while :meth:`Connection.run_here`
runs a function there: statements then run at once."""


def _execute(conn: sqlite3.Connection, operation: str, parameters: Any) -> _Answer:
    """A statement run whole on the connection's thread."""
    cursor = conn.cursor()
    try:
        if parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else ()
        return description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


def _executemany(conn: sqlite3.Connection, operation: str, parameters: Any) -> _Answer:
    cursor = conn.cursor()
    try:
        cursor.executemany(operation, parameters)
        return cursor.description, cursor.rowcount, cursor.lastrowid, ()
    finally:
        cursor.close()


class Cursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor whose statements are one trip each; it holds their answers."""

    __slots__ = ("_arraysize", "_description", "_lastrowid", "_rowcount")

    _awaitable_cursor_close = False  # there is no cursor left open to close

    def __init__(self, adapt_connection: AsyncAdapt_dbapi_connection) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._arraysize = 1

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    async def _async_soft_close(self) -> None:
        return

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        self._answer(_execute, operation, parameters)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        self._answer(_executemany, operation, seq_of_parameters)

    def _answer(self, run: Any, operation: Any, parameters: Any) -> None:
        try:
            if getattr(_here, "inline", False):
                answer = run(self._connection._conn, operation, parameters)
            else:
                answer = await_(self._trip(run, operation, parameters))
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        self._description, self._rowcount, self._lastrowid, rows = answer
        self._rows = collections.deque(rows)

    async def _trip(self, run: Any, operation: Any, parameters: Any) -> _Answer:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        async with self._adapt_connection._execute_mutex:
            answer = await connection._execute(  # type: ignore[no-untyped-call]
                run, connection._conn, operation, parameters
            )
        return cast(_Answer, answer)

    def nextset(self) -> None:
        self._rows.clear()  # one statement, one result set


class Connection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()

    _cursor_cls = Cursor

    def _open(self) -> bool:
        conn = self._connection._connection
        return conn is not None and conn.in_transaction

    def rollback(self) -> None:
        if self._open():
            super().rollback()

    def commit(self) -> None:
        if self._open():
            super().commit()

    async def run_here(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on this connection's SQLite thread, then a commit of
        what it wrote, in one trip; the statements it executes through this
        connection run there at once. When ``fn`` raises, nothing is
        committed (the caller's transaction rolls back).

        ``fn`` must not commit or roll back itself, and nothing else may use
        the connection meanwhile (the caller holds it; the execute lock keeps
        out anything else of its own).
        """
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        async with self._execute_mutex:
            return await connection._execute(  # type: ignore[no-untyped-call]
                _inline, connection._conn, fn, args
            )


def _inline(conn: sqlite3.Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    _here.inline = True
    try:
        result = fn(*args)
    finally:
        _here.inline = False
    if conn.in_transaction:
        conn.commit()
    return result


class Dbapi(AsyncAdapt_aiosqlite_dbapi):
    """SQLAlchemy's aiosqlite DBAPI module, making :class:`Connection` s."""

    def __init__(self) -> None:
        super().__init__(aiosqlite, sqlite3)

    def connect(self, *arg: Any, **kw: Any) -> Connection:
        adapted = super().connect(*arg, **kw)
        return Connection(self, adapted._connection)
