"""Publishing delivery tasks off the caller's thread, merging ids that arrive together.

``send()`` returns once its row is committed; the task that carries the id is published by a
background thread. Ids submitted while a publish is in flight wait for the next one and travel
together, and publishes are spaced at least ``min_interval`` apart, so a burst of sends becomes
a few tasks instead of one each, and the publishing thread rarely competes with the sending
threads for the interpreter; an isolated send is published at once. A process that dies with
ids still pending loses nothing: their rows are committed, and the dispatch sweep publishes
them again.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

Publish = Callable[[str, list[str]], None]


def publish_or_leave_to_sweep(publish: Publish, stream: str, ids: list[str]) -> None:
    """Publish ``ids``; on failure log and return, since their committed rows are not lost.

    The dispatch sweep publishes due messages whose task never left, so a broker outage
    delays these messages but loses none.
    """
    try:
        publish(stream, ids)
    except Exception:
        logger.warning("publishing %d message(s) failed; the sweep will retry", len(ids))


class BackgroundPublisher:
    """A per-process thread publishing ``(stream, ids)`` in batches of at most ``max_batch``."""

    def __init__(self, publish: Publish, *, max_batch: int, min_interval: float = 0.0) -> None:
        self._publish = publish
        self._max_batch = max_batch
        self._min_interval = min_interval
        self._last_publish = float("-inf")
        self._flushing = 0  # callers waiting in flush(): publish without spacing
        self._pending: dict[str, list[str]] = {}
        self._in_flight = 0
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._closed = False

    def submit(self, stream: str, ids: list[str]) -> None:
        """Queue ids for publishing; returns at once, whatever the broker's state."""
        with self._condition:
            self._ensure_thread()
            # with ids already pending the thread is due to publish anyway: waking it for each
            # send would only make it take the interpreter from the sending thread
            idle = not self._pending
            self._pending.setdefault(stream, []).extend(ids)
            if idle:
                self._condition.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far was published (or failed); False on timeout."""
        with self._condition:
            if self._pid != os.getpid():
                return True
            self._flushing += 1
            self._condition.notify_all()
            try:
                return self._condition.wait_for(
                    lambda: not self._pending and not self._in_flight, timeout=timeout
                )
            finally:
                self._flushing -= 1

    def close(self, timeout: float = 5.0) -> None:
        """Flush, then stop the thread."""
        self.flush(timeout)
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        thread = self._thread
        if thread is not None and self._pid == os.getpid():
            thread.join(timeout)
        self._thread = None

    def _ensure_thread(self) -> None:
        # A forked child inherits the parent's state but not its thread: start afresh, and
        # leave the parent's pending ids to the parent.
        if self._thread is not None and self._pid == os.getpid():
            return
        self._pending = {}
        self._in_flight = 0
        self._flushing = 0
        self._last_publish = float("-inf")
        self._closed = False
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="postroom-publisher", daemon=True)
        self._thread.start()
        atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._pending or self._closed)
                if self._closed and not self._pending:
                    return
                # ids submitted meanwhile join this publish
                due = self._last_publish + self._min_interval
                self._condition.wait_for(
                    lambda: self._closed or self._flushing, timeout=due - time.monotonic()
                )
                self._last_publish = time.monotonic()
                batches = [
                    (stream, ids[start : start + self._max_batch])
                    for stream, ids in self._pending.items()
                    for start in range(0, len(ids), self._max_batch)
                ]
                self._pending = {}
                self._in_flight = len(batches)
            for stream, ids in batches:
                publish_or_leave_to_sweep(self._publish, stream, ids)
                with self._condition:
                    self._in_flight -= 1
                    self._condition.notify_all()
