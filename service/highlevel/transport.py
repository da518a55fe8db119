"""The HTTP/1.1 transport of the sends to HighLevel: libcurl (``pycurl``), one kept-alive
handle per sending thread.

Why libcurl: a send is one small PATCH with a fixed set of headers, and the forwarder
makes hundreds a second. Over ``urllib3`` the Python HTTP stack was most of a send's CPU
(``http.client`` parses every answer's headers through ``email.parser``, and checks every
request header in Python): a whole send cost 0.29 ms of CPU, 0.13 ms with libcurl doing
that work in C (bench/client_cpu.py). libcurl releases the GIL while it waits, keeps
each handle's connection alive, and sends a request once more on a new connection when
a kept-alive one turns out closed before any answer (the server's idle timeout racing our
reuse of it), as the urllib3 client did by hand.

A ``CurlPool`` is safe to share between threads: each thread gets its own handle (a
handle is not thread-safe), created on its first send, so the connections kept alive
are at most the threads sending (the forwarder's FORWARD_CONCURRENCY).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import certifi
import pycurl
import requests


class TransportError(Exception):
    """No HTTP answer. The message names the kind of failure and, for a connection
    failure, libcurl's description (host and port, never a header)."""


class Headers(dict):
    """Answer headers by lower-case name; ``get`` takes any case."""

    def get(self, name: str, default=None):
        return dict.get(self, name.lower(), default)


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    headers: Headers
    body: bytes


class _Handle:
    """One thread's libcurl handle and what its last transfer received."""

    def __init__(self, proxy: str | None):
        self.lines: list[bytes] = []
        self.chunks: list[bytes] = []
        curl = self.curl = pycurl.Curl()
        curl.setopt(pycurl.NOSIGNAL, 1)  # timeouts without SIGALRM: required with threads
        curl.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        curl.setopt(pycurl.CAINFO, certifi.where())  # the CA bundle requests would use
        curl.setopt(pycurl.PROXY, proxy or "")  # "": none, whatever the environment says
        curl.setopt(pycurl.FOLLOWLOCATION, 0)
        curl.setopt(pycurl.HEADERFUNCTION, self.lines.append)
        curl.setopt(pycurl.WRITEFUNCTION, self.chunks.append)


class CurlPool:
    """Kept-alive libcurl handles, one per thread that sends; ``close`` ends them all."""

    def __init__(self, proxy: str | None = None):
        self.proxy = proxy
        self._local = threading.local()
        self._handles: list[_Handle] = []
        self._lock = threading.Lock()

    def _handle(self) -> _Handle:
        handle = getattr(self._local, "handle", None)
        if handle is None:
            handle = self._local.handle = _Handle(self.proxy)
            with self._lock:
                self._handles.append(handle)
        return handle

    def send(self, method: str, url: str, body: bytes, headers: list[str], *,
             connect_timeout: float, read_timeout: float) -> Answer:
        """One request; the answer, or ``TransportError``. ``headers`` are ``Name: value``
        lines, already checked to hold no line break."""
        handle = self._handle()
        curl = handle.curl
        handle.lines.clear()
        handle.chunks.clear()
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.CUSTOMREQUEST, method)
        curl.setopt(pycurl.POSTFIELDS, body)
        curl.setopt(pycurl.HTTPHEADER, headers)
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, int(connect_timeout * 1000))
        # libcurl has no per-read timeout: the whole exchange gets connect + read.
        curl.setopt(pycurl.TIMEOUT_MS, int((connect_timeout + read_timeout) * 1000))
        try:
            curl.perform()
        except pycurl.error as exc:
            code, message = exc.args[0], str(exc.args[1] if len(exc.args) > 1 else "")
            if code == pycurl.E_OPERATION_TIMEDOUT:
                sent = curl.getinfo(pycurl.PRETRANSFER_TIME) > 0  # 0: still connecting
                raise TransportError(
                    f"timeout: {'ReadTimeout' if sent else 'ConnectTimeout'}") from None
            raise TransportError(f"ConnectionError: {message.splitlines()[0][:200]}"
                                 if message else "ConnectionError") from None
        return _answer(curl.getinfo(pycurl.RESPONSE_CODE), handle.lines,
                       b"".join(handle.chunks))

    def close(self) -> None:
        with self._lock:
            handles, self._handles = self._handles, []
        for handle in handles:
            handle.curl.close()

    def __enter__(self) -> CurlPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _answer(status: int, lines: list[bytes], body: bytes) -> Answer:
    """The last header block's status line and headers (a proxy's CONNECT answer, or an
    interim 1xx, comes first in ``lines``)."""
    reason, headers = "", Headers()
    for raw in lines:
        line = raw.decode("latin-1").rstrip("\r\n")
        if line.startswith("HTTP/"):
            reason, headers = line.split(" ", 2)[2] if line.count(" ") >= 2 else "", Headers()
        elif ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return Answer(status=status, reason=reason, headers=headers, body=body)


def build_pool(pool_size: int, base_url: str | None = None) -> CurlPool:
    """Handles for ``pool_size`` concurrent sends (made per sending thread as it first
    sends, so as many as the threads, whatever the figure). A proxy from HTTPS_PROXY / HTTP_PROXY /
    NO_PROXY (any case, as requests reads them) is read once, here."""
    proxy = requests.utils.get_environ_proxies(base_url).get(
        base_url.split(":", 1)[0]) if base_url else None
    return CurlPool(proxy)
