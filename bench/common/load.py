"""Open-loop load at a steady rate."""

from __future__ import annotations

import math
import time

# -- open-loop load at a steady rate ------------------------------------------------------

class PacedLoad:
    """Requests at a steady rate on 127.0.0.1: request i is due at start + i / rate.

    Open loop: a slow answer does not slow the schedule down; a request waits for a free
    connection instead, and its latency is counted from when it was due (no coordinated
    omission). ``make_request(i)`` returns ``(label, method, path, body, headers)``. Each
    result is ``(label, due, done, status, request index)`` in ``time.monotonic()``
    seconds; status 0 is no answer (connection error or timeout: the server may still have
    acted on it), -1 a request never sent because the run was over (bounded wait).
    """

    def __init__(self, port: int, make_request, *, rate: float, duration: float,
                 connections: int = 32, timeout: float = 10.0) -> None:
        import queue

        self.port, self.make_request = port, make_request
        self.rate, self.duration, self.timeout = rate, duration, timeout
        self.connections = connections
        self.results: list[tuple] = []
        self.start_at = self.end_at = 0.0
        self._queue: queue.Queue = queue.Queue()
        self._threads: list = []

    def start(self) -> PacedLoad:
        import threading

        self.start_at = time.monotonic() + 0.2
        self.end_at = self.start_at + self.duration
        self._give_up_at = self.end_at + self.timeout + 5
        self._threads = [threading.Thread(target=self._schedule, daemon=True)] + [
            threading.Thread(target=self._work, daemon=True) for _ in range(self.connections)]
        for t in self._threads:
            t.start()
        return self

    def _schedule(self) -> None:
        i = 0
        while (due := self.start_at + i / self.rate) < self.end_at:
            time.sleep(max(0.0, due - time.monotonic()))
            self._queue.put((i, due))
            i += 1
        for _ in range(self.connections):
            self._queue.put(None)

    def _work(self) -> None:
        import http.client

        conn = None
        while (item := self._queue.get()) is not None:
            i, due = item
            label, method, path, body, headers = self.make_request(i)
            if time.monotonic() > self._give_up_at:
                self.results.append((label, due, time.monotonic(), -1, i))
                continue
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                conn.request(method, path, body, headers)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn, status = None, 0
            self.results.append((label, due, time.monotonic(), status, i))
        if conn is not None:
            conn.close()

    def join(self) -> list[tuple]:
        """Wait (bounded) for the schedule to end and every request to be answered."""
        deadline = self._give_up_at + self.timeout + 5
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        return sorted(self.results, key=lambda r: r[1])


def per_second(times: list[float], origin: float, seconds: float) -> list[int]:
    """How many of ``times`` fall in each whole second after ``origin``, for ``seconds``."""
    counts = [0] * max(1, math.ceil(seconds))
    for t in times:
        k = int(t - origin)
        if 0 <= k < len(counts):
            counts[k] += 1
    return counts
