"""An asyncio loop running in its own daemon thread, so sync code can call asyncio clients.

The engine calls its event log from plain threads (gRPC handlers, the learner); an asyncio
client such as nats-py needs one loop that owns its connection. Every call waits with a
timeout, so a stuck server cannot hang a request thread forever.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """Runs coroutines on a private event loop; `run` blocks the calling thread for the result."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """The coroutine's result; TimeoutError (after cancelling it) past `timeout` seconds."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()  # so it stops holding locks and connections on the loop
            raise

    def close(self, timeout: float = 5.0) -> None:
        """Cancel what still runs on the loop (a client's background tasks), stop it, release it."""
        if self.loop.is_closed():
            return
        try:
            self.run(_cancel_other_tasks(timeout), timeout + 1)
        except TimeoutError:
            pass  # closing goes on: a daemon thread does not keep the process alive
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():  # a loop still running cannot be closed
            self.loop.close()


async def _cancel_other_tasks(timeout: float) -> None:
    """Cancel every task but this one and wait for them to unwind (closing a loop with tasks
    still pending leaves them to fail noisily when garbage-collected)."""
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)
