"""An asyncio event loop on simulated time: when nothing is ready to run, its clock jumps to the next timer.

The distributed environment over an in-memory broker does no I/O, so every wait in it is a timer (a
message's latency, a receiver's timeout). On this loop such a wait costs no wall-clock time, and which
message beats which timeout depends only on the simulated times, never on how loaded the machine is:
an impaired run is then reproducible step for step. Not for real sockets (an MQTT broker): their
waits must pass in real time.
"""
from __future__ import annotations

import asyncio
import selectors
from typing import Any

__all__ = ["SimulatedTimeLoop"]


class _AdvancingSelector(selectors.BaseSelector):
    """A selector that, instead of sleeping ``timeout`` seconds, advances its loop's clock by them
    (after checking, without waiting, for the loop's own wake-up pipe)."""

    def __init__(self, loop: SimulatedTimeLoop) -> None:
        self._inner = selectors.DefaultSelector()
        self._loop = loop

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout <= 0:  # None: nothing scheduled at all, only another thread can wake us
            return self._inner.select(timeout)
        ready = self._inner.select(0)
        if not ready:
            self._loop.advance(timeout)
        return ready

    def close(self) -> None:
        self._inner.close()

    def get_map(self) -> Any:
        return self._inner.get_map()


class SimulatedTimeLoop(asyncio.SelectorEventLoop):
    """``loop.time()`` is simulated seconds from 0, advanced only when every task waits on a timer."""

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_AdvancingSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on (what the loop does by itself when idle)."""
        if seconds > 0:
            self._now += seconds
