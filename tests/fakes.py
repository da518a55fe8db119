"""In-process fakes for the forwarder's unit tests (the HTTP-level fake is fake_highlevel.py)."""

from __future__ import annotations

import threading
from concurrent.futures import Executor, Future
from dataclasses import dataclass

from service.highlevel.client import PATHS, HighLevelError, Response

Answer = int | Response | HighLevelError


@dataclass(frozen=True)
class Call:
    """One ``mark_viewed`` call as the fake received it."""

    kind: str
    document_id: str
    token: str


class FakeHighLevelClient:
    """A scriptable ``HighLevel``: answers what was scripted, in order, then 200.

    ``fake.script(429, 200)``, ``fake.script(HighLevelError("timeout"))`` or
    ``fake.script(Response(503, retry_after=5), document_id="inv_2")``; every call is
    recorded in ``fake.calls``.
    """

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._script: list[tuple[Answer, str | None]] = []
        self._lock = threading.Lock()

    def script(self, *answers: Answer, document_id: str | None = None) -> None:
        """Queue answers (a status, a ``Response`` or an error to raise), optionally per id."""
        with self._lock:
            self._script.extend((answer, document_id) for answer in answers)

    def mark_viewed(self, *, kind: str, document_id: str, token: str) -> Response:
        """Record the call; answer with the next scripted answer for it, else 200."""
        if kind not in PATHS:
            raise ValueError(f"unknown kind {kind!r}")
        with self._lock:
            self.calls.append(Call(kind, document_id, token))
            answer: Answer = 200
            for i, (scripted, doc) in enumerate(self._script):
                if doc in (None, document_id):
                    answer = scripted
                    del self._script[i]
                    break
        if isinstance(answer, HighLevelError):
            raise answer
        if isinstance(answer, Response):
            return answer
        return Response(answer, message=None if answer < 300 else f"HTTP {answer}")


class InlineExecutor(Executor):
    """Run each submitted call at once, in the caller's thread: ``forward_once`` without threads."""

    def submit(self, fn, /, *args, **kwargs):
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller via the future
            future.set_exception(exc)
        return future
