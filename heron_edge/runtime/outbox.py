"""A bounded on-disk outbox (SQLite, stdlib) for telemetry that could not be published.

Records keep their order (an autoincrement key); ``flush`` publishes them oldest first and deletes
them only after the broker acknowledged them (batch by batch), so a flush cut short by another
disconnect resumes where it stopped (a crash between an acknowledgement and the delete may send a
record twice: at least once, as MQTT QoS 1). At most ``max_records`` are kept: adding one more drops
the oldest and counts it in ``overflow``. The file survives a restart of the gateway.

The database is only touched from one worker thread (``put``, ``flush``, ``aclose``), in the order the
calls were made, so a slow or full disk never blocks the asyncio loop. A database failure there is
logged and counted in ``failures`` and never raised: telemetry may be lost, the gateway keeps running.
The synchronous ``add`` / ``close`` remain for callers without a loop.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from heron_edge.errors import BrokerError, ConfigError

__all__ = ["Outbox"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_Row = tuple[int, str, bytes]


class Outbox:
    """FIFO of ``(topic, payload)`` on disk, bounded to ``max_records``."""

    def __init__(self, path: str | Path, *, max_records: int = 10_000) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self.path = str(path)
        self.max_records = max_records
        self._lock = threading.Lock()  # one statement sequence at a time, whichever thread runs it
        self._executor: ThreadPoolExecutor | None = None
        db: sqlite3.Connection | None = None
        try:
            # autocommit (each statement is atomic); used from the worker thread, serialised by the lock
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
                       " payload BLOB NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            self._count = int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            row = db.execute("SELECT value FROM counters WHERE name='overflow'").fetchone()
        except sqlite3.Error as exc:
            if db is not None:
                db.close()
            raise ConfigError(f"outbox.path: cannot open the outbox {self.path}: {exc}") from exc
        self._db = db
        self._overflow = int(row[0]) if row else 0
        self.queued = 0
        self.sent = 0
        self.failures = 0  # database operations that failed (disk full, file gone); logged, never raised

    @property
    def overflow(self) -> int:
        """Records dropped because the outbox was full (persisted across restarts; read once, kept in memory)."""
        return self._overflow

    def __len__(self) -> int:
        return self._count

    # ------------------------------------------------------------------ synchronous (any thread)
    def add(self, topic: str, payload: bytes) -> None:
        """Append one record; when full, drop the oldest first (counted in ``overflow``). Blocks on the disk
        and raises sqlite3.Error; on a loop use :meth:`put`."""
        with self._lock, self._db:
            if self._count >= self.max_records:
                excess = self._count - self.max_records + 1
                self._db.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,))
                self._db.execute("INSERT INTO counters VALUES ('overflow', ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
                                 (excess, excess))
                self._count -= excess
                self._overflow += excess
            self._db.execute("INSERT INTO outbox (topic, payload) VALUES (?, ?)", (topic, payload))
            self._count += 1
        self.queued += 1

    def close(self) -> None:
        """Close the database (twice is harmless). Does not wait for queued work: on a loop use :meth:`aclose`."""
        with self._lock:
            self._close_db()
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    def _close_db(self) -> None:
        try:
            self._db.close()
        except sqlite3.ProgrammingError:
            pass

    def _oldest(self, batch: int) -> list[_Row]:
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload FROM outbox ORDER BY id LIMIT ?", (batch,)).fetchall()
        return [(int(key), str(topic), bytes(payload)) for key, topic, payload in rows]

    def _delete_through(self, key: int) -> None:
        """Delete every record up to and including ``key`` (the ones just acknowledged)."""
        with self._lock:
            deleted = self._db.execute("DELETE FROM outbox WHERE id <= ?", (key,)).rowcount
            self._count = max(0, self._count - max(deleted, 0))

    # ------------------------------------------------------------------ asynchronous (off the loop)
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the outbox's single worker thread (calls run in the order they were made)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="heron-outbox")
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    def _failed(self, what: str, exc: Exception) -> None:
        self.failures += 1
        if self.failures == 1 or self.failures % 100 == 0:  # a full disk fails every cycle: do not flood the log
            log.warning("outbox %s: %s failed (%d failures so far): %s", self.path, what, self.failures, exc)

    async def put(self, topic: str, payload: bytes) -> bool:
        """:meth:`add` on the worker thread; False (logged, counted in ``failures``) when the database failed."""
        try:
            await self._run(self.add, topic, payload)
        except sqlite3.Error as exc:
            self._failed("add", exc)
            return False
        return True

    async def flush(self, publish: Callable[[str, bytes], Awaitable[None]], *, batch: int = 100,
                    budget_s: float | None = None) -> int:
        """Publish records oldest first until empty, ``publish`` raises BrokerError or ``budget_s`` seconds
        have passed (the rest waits for the next call); returns how many were sent. The database work runs
        on the worker thread; a database failure ends the flush (logged, counted)."""
        sent = 0
        deadline = None if budget_s is None else time.monotonic() + budget_s
        while self._count and (deadline is None or time.monotonic() < deadline):
            try:
                rows = await self._run(self._oldest, batch)
            except sqlite3.Error as exc:
                self._failed("read", exc)
                return sent
            if not rows:
                self._count = 0
                break
            acked: int | None = None
            stop = False
            try:
                for key, topic, payload in rows:
                    if deadline is not None and time.monotonic() >= deadline:
                        stop = True
                        break
                    try:
                        await publish(topic, payload)
                    except BrokerError:
                        stop = True
                        break
                    acked = key
                    sent += 1
                    self.sent += 1
            finally:
                if acked is not None:
                    try:
                        await self._run(self._delete_through, acked)
                    except sqlite3.Error as exc:  # they stay queued and go out again: duplicates, not losses
                        self._failed("delete", exc)
                        stop = True
            if stop:
                break
        return sent

    async def aclose(self) -> None:
        """Close after every queued database operation finished (twice is harmless)."""
        executor, self._executor = self._executor, None
        if executor is None:
            self.close()
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self.close)
        finally:
            executor.shutdown(wait=False)
