"""What is kept of a view's client: its address as RETAIN_CLIENT_IP says, and the memory
that folds its repeats.

Verdicts (``verdicts``) see the full address; only what is stored is reduced, before
anything is written. ``truncate`` keeps the network a view came from (IPv4 /24, IPv6
/48: enough to tell a mail provider's proxy or a scanner's range apart, not a person's
address), ``none`` keeps nothing, ``full`` keeps the address as received.

A pixel fetched again and again (a customer reopening an email, a mail client refetching
images, or someone replaying the URL in a loop) is the same client looking at the same
document: repeats within one coalescing window add to the count of the row already
stored (``events.views``) rather than adding a row each. Each web process remembers, for
the current window (aligned to the clock), the row each client stored for each document
(``RecentClients``): a repeat costs no look-up and no index (an index on the client would
cost every pixel view a B-tree page at a random place in its commit, and a look-up a
statement under the write lock; measured, they halved the pixel's throughput). So a
client stores at most one row per document, window and web process it reaches.
"""

from __future__ import annotations

import hashlib
import ipaddress

RETAIN_MODES = ("truncate", "full", "none")
_PREFIX = {4: 24, 6: 48}


def retain_ip(ip: str | None, mode: str) -> str | None:
    """The part of ``ip`` to store under ``mode``; None for nothing (or an unparseable
    address under ``truncate``, which cannot be reduced safely)."""
    if ip is None or mode == "none":
        return None
    if mode == "full":
        return ip
    parts = ip.split(".")
    if len(parts) == 4 and all(p.isdigit() and len(p) <= 3 and int(p) < 256 for p in parts):
        return f"{int(parts[0])}.{int(parts[1])}.{int(parts[2])}.0"  # (the common case, fast)
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    network = ipaddress.ip_network(f"{address}/{_PREFIX[address.version]}", strict=False)
    return str(network.network_address)


def client_key(*, kind: str, location_id: str, document_id: str, ip: str | None,
               user_agent: str | None) -> str | None:
    """Who looked at which document: the key under which a client's repeats fold; None
    when there is no client to tell apart (no address, no user agent)."""
    if ip is None and user_agent is None:
        return None
    identity = "\x00".join((kind, location_id, document_id, ip or "", user_agent or ""))
    return hashlib.blake2b(identity.encode("utf-8", "surrogatepass"),
                           digest_size=16).hexdigest()


class RecentClients:
    """The rows this process stored in the current window, by client key (see the module
    doc). Bounded: past ``limit`` keys in one window, new clients are not remembered (their
    repeats are stored as rows of their own, as before)."""

    def __init__(self, limit: int = 100_000):
        self.limit = limit
        self._window: int | None = None
        self._rows: dict[str, str] = {}

    def get(self, window: int, key: str) -> str | None:
        """The event id stored for ``key`` in ``window``, if this process stored one."""
        return self._rows.get(key) if window == self._window else None

    def remember(self, window: int, rows: dict[str, str]) -> None:
        """Note rows just committed (key -> event id) in ``window``."""
        if self._window is not None and window < self._window:
            return  # a late request of the last window: its rows fold no more
        if window != self._window:  # a new window: the last one's rows fold no more
            self._window, self._rows = window, {}
        if len(self._rows) < self.limit:
            self._rows.update(rows)
