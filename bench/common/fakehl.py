"""The fake HighLevel (tests/fake_highlevel.py), in a process of its own."""

from __future__ import annotations

import sys
import time

from .processes import ROOT, free_port

# -- the fake HighLevel, in a process of its own ------------------------------------------

def _fake_child(options: dict, pipe) -> None:
    """Serve ``tests.fake_highlevel.FakeHighLevel`` on 127.0.0.1, obeying commands on ``pipe``."""
    sys.path.insert(0, str(ROOT))
    from tests.fake_highlevel import FakeHighLevel

    hl = FakeHighLevel(latency=options["latency"], enforce_rate_limit=options["rate_limit"],
                       validate_openapi=options["validate_openapi"],
                       rate_limit_max=options["rate_limit_max"])
    hl.start("127.0.0.1", options["port"])

    def patches() -> list[tuple]:
        return [(r.at, r.status, r.kind, r.document_id) for r in list(hl.requests)
                if r.method == "PATCH"]

    pipe.send({"url": hl.url, "openapi": hl.validate_openapi})
    try:
        while pipe.poll(3600):  # bounded: a parent silent for an hour is gone
            command = pipe.recv()
            if command == "stop":
                break
            if command in ("down", "up"):
                hl.set_down(command == "down")
                pipe.send("ok")
            elif command == "patches":
                pipe.send(patches())
    except (EOFError, OSError):  # the parent died
        pass
    hl.stop()
    try:
        pipe.send({"patches": patches(), "violations": list(hl.violations)[:5]})
    except OSError:
        pass


class FakeHighLevelProcess:
    """The fake HighLevel (``tests/fake_highlevel.py``) in a child process, on a fixed port.

    ``set_down(True)`` makes it answer 503 to every PATCH (after its latency, as HighLevel's
    edge would); ``refuse()`` stops the process, so nothing listens and every connection,
    kept-alive ones too, is closed; ``listen()`` starts a new one on the same port. Every
    PATCH it received is kept as ``(time.monotonic() received, status, kind, document id)``:
    the monotonic clock is the machine's, so the times compare with this process's.
    """

    def __init__(self, *, latency: float, rate_limit: bool = True,
                 validate_openapi: bool = False, rate_limit_max: int = 100) -> None:
        self.options = {"latency": latency, "rate_limit": rate_limit,
                        "validate_openapi": validate_openapi, "port": free_port(),
                        "rate_limit_max": rate_limit_max}
        self.url = f"http://127.0.0.1:{self.options['port']}"
        self.violations: list[str] = []
        self._done: list[tuple] = []  # PATCHes seen by processes already stopped
        self._proc = self._pipe = None

    def start(self) -> FakeHighLevelProcess:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._pipe, child_end = ctx.Pipe()
        self._proc = ctx.Process(target=_fake_child, args=(self.options, child_end),
                                 daemon=True, name="fake-highlevel")
        self._proc.start()
        deadline = time.monotonic() + 60
        while not self._pipe.poll(0.1):
            if not self._proc.is_alive() or time.monotonic() > deadline:
                self._kill()
                raise RuntimeError("fake HighLevel did not start (see the output above)")
        self._pipe.recv()
        return self

    listen = start

    def _call(self, command: str, timeout: float = 30.0):
        self._pipe.send(command)
        if not self._pipe.poll(timeout):
            raise RuntimeError(f"fake HighLevel did not answer {command!r} in {timeout:.0f} s")
        return self._pipe.recv()

    def set_down(self, down: bool) -> None:
        self._call("down" if down else "up")

    def patches(self) -> list[tuple]:
        return self._done + (self._call("patches") if self._proc is not None else [])

    def refuse(self) -> None:
        self.stop()

    def stop(self) -> list[tuple]:
        """Stop the process (if running); return every PATCH received so far."""
        if self._proc is not None:
            try:
                self._pipe.send("stop")
                if self._pipe.poll(30):
                    final = self._pipe.recv()
                    self._done += final["patches"]
                    self.violations += final["violations"]
            except (OSError, EOFError):
                pass
            self._kill()
        return list(self._done)

    def _kill(self) -> None:
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._pipe.close()
        self._proc = self._pipe = None

    def __enter__(self) -> FakeHighLevelProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
