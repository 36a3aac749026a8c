"""Shared by the Pilot-driven TUI tests."""

from __future__ import annotations

import time
from typing import Any


async def settle(app: Any, pilot: Any, timeout: float = 60.0) -> None:
    """Wait until the session is open and every queued command has been shown."""
    deadline = time.monotonic() + timeout
    await pilot.pause()
    while not app.ready or app.busy or app._queue:
        assert time.monotonic() < deadline, "the app did not settle"
        await pilot.pause(0.02)
    await pilot.pause()
