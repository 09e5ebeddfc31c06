"""A bounded on-disk outbox (SQLite, stdlib) for telemetry that could not be published.

Records keep their order (an autoincrement key); ``flush`` publishes them oldest first and deletes
each one only after the broker acknowledged it, so a flush cut short by another disconnect resumes
where it stopped. At most ``max_records`` are kept: adding one more drops the oldest and counts it
in ``overflow``. The file survives a restart of the gateway.
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from heron_edge.errors import BrokerError

__all__ = ["Outbox"]


class Outbox:
    """FIFO of ``(topic, payload)`` on disk, bounded to ``max_records``."""

    def __init__(self, path: str | Path, *, max_records: int = 10_000) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self.path = str(path)
        self.max_records = max_records
        self._db = sqlite3.connect(self.path, isolation_level=None)  # autocommit; each statement is atomic
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
                         " payload BLOB NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self._count = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        row = self._db.execute("SELECT value FROM counters WHERE name='overflow'").fetchone()
        self._overflow = int(row[0]) if row else 0
        self.queued = 0
        self.sent = 0

    @property
    def overflow(self) -> int:
        """Records dropped because the outbox was full (persisted across restarts; read once, kept in memory)."""
        return self._overflow

    def __len__(self) -> int:
        return self._count

    def add(self, topic: str, payload: bytes) -> None:
        """Append one record; when full, drop the oldest first (counted in ``overflow``)."""
        with self._db:
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

    async def flush(self, publish: Callable[[str, bytes], Awaitable[None]], *, batch: int = 100,
                    budget_s: float | None = None) -> int:
        """Publish records oldest first until empty, ``publish`` raises BrokerError or ``budget_s`` seconds
        have passed (the rest waits for the next call); returns how many were sent."""
        sent = 0
        deadline = None if budget_s is None else time.monotonic() + budget_s
        while self._count and (deadline is None or time.monotonic() < deadline):
            rows = self._db.execute("SELECT id, topic, payload FROM outbox ORDER BY id LIMIT ?", (batch,)).fetchall()
            if not rows:
                self._count = 0
                break
            for key, topic, payload in rows:
                if deadline is not None and time.monotonic() >= deadline:
                    return sent
                try:
                    await publish(topic, bytes(payload))
                except BrokerError:
                    return sent
                self._db.execute("DELETE FROM outbox WHERE id = ?", (key,))
                self._count -= 1
                sent += 1
                self.sent += 1
        return sent

    def close(self) -> None:
        """Close the database (twice is harmless)."""
        try:
            self._db.close()
        except sqlite3.ProgrammingError:
            pass
