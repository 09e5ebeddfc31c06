"""Shared fixtures: a real Mosquitto on loopback, and a helper to run coroutines with a deadline.

Where mosquitto is missing, MQTT tests skip with an install hint; with CI=true they fail instead.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from heron_edge.runtime.mosquitto import INSTALL_HINT, MosquittoProcess, find_mosquitto, running_mosquitto

T = TypeVar("T")


def require_mosquitto() -> None:
    """Skip (or, with CI=true, fail) when no mosquitto executable is available."""
    if find_mosquitto() is None:
        message = f"mosquitto not found; {INSTALL_HINT}"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"{message} (CI=true: MQTT tests must run, never skip)", pytrace=False)
        pytest.skip(message)


@pytest.fixture
def mosquitto() -> Iterator[MosquittoProcess]:
    """A fresh mosquitto on a free 127.0.0.1 port (config: anonymous, TCP_NODELAY, no persistence)."""
    require_mosquitto()
    with running_mosquitto() as process:
        yield process


def run_async(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run ``coro`` in a new event loop; fail with TimeoutError after ``timeout`` seconds (never hang)."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@pytest.fixture
def arun() -> Callable[..., Any]:
    """``arun(coro, timeout=30)``: run a coroutine to completion with a deadline."""
    return run_async
