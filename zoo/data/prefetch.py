"""Batches assembled on a background thread, a few ahead of the step that consumes them.

Host work (gathering windows, copying them onto the devices) then overlaps the devices' work on
the steps before. The position this reports is the source's position after the last batch
*handed out*, not after the last one assembled, so a checkpoint taken after step k resumes
exactly at batch k + 1 however far the thread has run ahead.
"""

import queue
import threading


class Prefetcher:
    """`convert(batch)` for each batch of `source` (an iterator with `get_state()`), `depth`
    of them ahead; a context manager that stops the thread on exit, even on an exception."""

    def __init__(self, source, convert=lambda batch: batch, depth: int = 2):
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, got {depth}")
        self._source, self._convert = source, convert
        self._state = source.get_state()
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="prefetch", daemon=True)
        self._thread.start()

    def _fill(self):
        try:
            while not self._stop.is_set():
                batch = self._convert(next(self._source))
                self._put((batch, self._source.get_state()))
        except BaseException as e:  # noqa: BLE001 - raised again in the consumer's thread
            self._put(e)

    def _put(self, item) -> None:
        while not self._stop.is_set():  # a full queue must not keep close() waiting
            try:
                return self._queue.put(item, timeout=0.05)
            except queue.Full:
                pass

    def __iter__(self):
        return self

    def __next__(self):
        if self._stop.is_set():
            raise RuntimeError("the prefetcher is closed")
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, self._state = item
        return batch

    def get_state(self) -> dict:
        """The source's state after the last batch handed out."""
        return self._state

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
