"""Real subprocesses for the end-to-end tests: started with logs in files, always reaped.

Each process runs in its own session (``start_new_session``), so its whole process group
(gunicorn's master and workers) can be signalled, and killed, at once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's console scripts: flask, gunicorn


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], object], *, timeout: float, interval: float = 0.1,
             what: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Process:
    """One subprocess with stdout and stderr in files under ``log_dir``."""

    def __init__(self, name: str, args: Sequence[str], *, env: Mapping[str, str],
                 log_dir: Path, cwd: Path = ROOT):
        self.name = name
        self.args = list(args)
        self.stdout_path = log_dir / f"{name}.stdout.log"
        self.stderr_path = log_dir / f"{name}.stderr.log"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            # The child keeps its own copies of the descriptors; ours close at once.
            self.popen = subprocess.Popen(self.args, cwd=cwd, env=dict(env), stdout=out,
                                          stderr=err, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        self.pid = self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def running(self) -> bool:
        return self.popen.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process itself (not its group)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Wait for the exit code; raise ``subprocess.TimeoutExpired`` after ``timeout``."""
        return self.popen.wait(timeout=timeout)

    def group_alive(self) -> bool:
        """Whether any process is left in this process's group (e.g. orphaned workers)."""
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # pragma: no cover - a recycled id owned by someone else
            return False
        return True

    def kill_group(self) -> None:
        """SIGKILL the process and everything in its group, then reap it."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - unkillable: report, move on
            print(f"{self.name} (pid {self.pid}) did not die after SIGKILL", file=sys.stderr)

    def report(self) -> str:
        """Command, exit code and both logs, for a failing test's captured output."""
        return (f"===== {self.name} (pid {self.pid}, exit {self.popen.poll()}): "
                f"{' '.join(self.args)}\n"
                f"----- stdout\n{self.stdout()}\n----- stderr\n{self.stderr()}\n")


class Processes:
    """Start processes for one test; ``cleanup`` kills stragglers and prints every log."""

    def __init__(self, log_dir: Path, env: Mapping[str, str]):
        self.log_dir = log_dir
        self.env = dict(env)
        self.started: list[Process] = []
        self._names: dict[str, int] = {}

    def start(self, name: str, args: Sequence[str], **env: str) -> Process:
        count = self._names.get(name, 0) + 1
        self._names[name] = count
        unique = name if count == 1 else f"{name}-{count}"
        proc = Process(unique, args, env={**self.env, **env}, log_dir=self.log_dir)
        self.started.append(proc)
        return proc

    def run(self, name: str, args: Sequence[str], *, timeout: float = 60, **env: str) -> str:
        """Run a command to completion; fail (with its output) unless it exits 0."""
        proc = self.start(name, args, **env)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill_group()
            raise AssertionError(
                f"{name} still running after {timeout}s\n{proc.report()}") from None
        assert code == 0, f"{name} exited {code}\n{proc.report()}"
        return proc.stdout()

    def cleanup(self) -> None:
        for proc in self.started:
            if proc.running() or proc.group_alive():
                print(f"killing straggler {proc.name} (pid {proc.pid})", file=sys.stderr)
                proc.kill_group()
            else:
                proc.wait(0)  # already exited: reap (poll() did), keeps Popen quiet
        for proc in self.started:
            print(proc.report())


def flask(*args: str) -> list[str]:
    """The ``flask --app service ...`` command line in this venv."""
    return [str(BIN / "flask"), "--app", "service", *args]


def gunicorn(*args: str) -> list[str]:
    """The web process exactly as the Procfile starts it."""
    return [str(BIN / "gunicorn"), "--config", "config/gunicorn.conf.py", *args,
            "service:create_app()"]
