"""What is kept of a view's client: its address as RETAIN_CLIENT_IP says, and the key that
folds its repeats.

Verdicts (``verdicts``) see the full address; only what is stored is reduced, before
anything is written. ``truncate`` keeps the network a view came from (IPv4 /24, IPv6
/48: enough to tell a mail provider's proxy or a scanner's range apart, not a person's
address), ``none`` keeps nothing, ``full`` keeps the address as received.

A pixel fetched again and again (a customer reopening an email, a mail client refetching
images, or someone replaying the URL in a loop) is the same client looking at the same
document: repeats within one coalescing window add to the count of the row already
stored (``events.views``) rather than adding a row each, so storage grows with clients
and windows, not with requests. ``client_key`` names that (document, client, window);
windows are aligned to the clock, so a client stores at most one row per document per
window.
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
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    network = ipaddress.ip_network(f"{address}/{_PREFIX[address.version]}", strict=False)
    return str(network.network_address)


def client_key(*, kind: str, location_id: str, document_id: str, ip: str | None,
               user_agent: str | None, window_start: int) -> str | None:
    """The key under which repeats of one client's view of a document within one window
    fold into one row; None when there is no client to tell apart (no address, no
    user agent)."""
    if ip is None and user_agent is None:
        return None
    identity = "\x00".join((kind, location_id, document_id, ip or "", user_agent or "",
                            str(window_start)))
    return hashlib.blake2b(identity.encode("utf-8", "surrogatepass"),
                           digest_size=16).hexdigest()
