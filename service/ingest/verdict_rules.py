"""The machine-open rules files: their format, checked on load, and how one rule matches.

A file (the shipped ``data/machine_opens.toml``, or an operator's ``MACHINE_OPEN_RULES``) has
three arrays of tables: ``[[rules]]``, each giving a verdict to the views it matches;
``[[last_rules]]``, the same but checked after crawlerdetect (generic signs, such as a URL in
the user agent, whose reason would hide crawlerdetect's more specific one); and
``[[clients]]``, the tokens that mark a browser or a mail client (a user agent that nothing
before called a machine is a person's only if it carries one). The shipped file documents
the format and every entry's source.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import itertools
import re
import tomllib
from dataclasses import dataclass
from typing import Any

VERDICTS = ("human", "proxy_open", "machine_prefetch", "scanner", "bot")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")
_RULE_KEYS = {"name", "verdict", "user_agents", "networks", "source"}
_CLIENT_KEYS = {"name", "user_agents", "source"}
SECTIONS = {"rules", "last_rules", "clients"}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Rule:
    """One ``[[rules]]`` entry; with both user agents and networks, both must match."""

    name: str
    verdict: str
    user_agents: tuple[re.Pattern[str], ...] = ()
    networks: tuple[Network, ...] = ()

    def match(self, user_agent: str | None, addr: Address | None) -> str | None:
        """Return the reason this rule matches, or None."""
        return self.match_address(addr) if self.matches_user_agent(user_agent) else None

    def matches_user_agent(self, user_agent: str | None) -> bool:
        """The user-agent half: true when the rule has no user-agent patterns."""
        return not self.user_agents or bool(
            user_agent and any(p.search(user_agent) for p in self.user_agents))

    def match_address(self, addr: Address | None) -> str | None:
        """The network half, for a user agent that matched: the reason, or None."""
        if not self.networks:
            return f"ua:{self.name}"
        hit = None if addr is None else self._ranges[addr.version].find(int(addr))
        kind = "ip+ua" if self.user_agents else "ip"
        return None if hit is None else f"{kind}:{self.name} {hit}"

    @functools.cached_property
    def _ranges(self) -> dict[int, _Ranges]:
        # Scanner rules list hundreds of networks and match every view's address: a
        # binary search instead of `addr in net` for each (~0.5 us apiece).
        return {v: _Ranges([n for n in self.networks if n.version == v]) for v in (4, 6)}


@dataclass(frozen=True)
class ClientToken:
    """One ``[[clients]]`` entry: user-agent patterns that mark a browser or a mail client."""

    name: str
    user_agents: tuple[re.Pattern[str], ...]

    def matches(self, user_agent: str) -> bool:
        """Whether the user agent carries this token."""
        return any(p.search(user_agent) for p in self.user_agents)


class _Ranges:
    """Networks of one IP version, searchable by address (as an int) in O(log n)."""

    def __init__(self, networks: list[Network]):
        nets = sorted(networks, key=lambda n: int(n.network_address))
        self.nets = nets
        self.starts = [int(n.network_address) for n in nets]
        ends = [int(n.broadcast_address) for n in nets]
        # reach[i]: the highest address any of nets[0..i] covers (networks may overlap).
        self.reach = list(itertools.accumulate(ends, max))
        self.ends = ends

    def find(self, addr: int) -> Network | None:
        """The network containing ``addr`` (the one listed latest by start), or None."""
        i = bisect.bisect_right(self.starts, addr) - 1
        while i >= 0 and self.reach[i] >= addr:
            if self.ends[i] >= addr:
                return self.nets[i]
            i -= 1
        return None


def parse_rules(data: dict[str, Any], origin: str, key: str = "rules") -> list[Rule]:
    """Validate a parsed rules document and build its ``[[rules]]`` (or ``[[last_rules]]``),
    in file order."""
    return [_parse_rule(entry, where) for entry, where in _tables(data, key, origin)]


def parse_clients(data: dict[str, Any], origin: str) -> list[ClientToken]:
    """Validate a parsed rules document and build its ``[[clients]]``, in file order."""
    return [_parse_client(entry, where) for entry, where in _tables(data, "clients", origin)]


def read_rules_file(path: Any, origin: str) -> dict[str, Any]:
    """Parse a TOML file (a ``Path`` or an ``importlib.resources`` traversable)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{origin}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{origin}: not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{origin}: not valid TOML: {exc}") from None


def _tables(data: dict[str, Any], key: str, origin: str) -> list[tuple[dict, str]]:
    if unknown := set(data) - SECTIONS:
        raise ValueError(f"{origin}: unknown top-level key(s) {sorted(unknown)}; "
                         "rules go in [[rules]] or [[last_rules]] tables, client tokens "
                         "in [[clients]]")
    entries = data.get(key, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{origin}: '{key}' must be an array of tables ([[{key}]])")
    return [(entry, f"{origin}: {key}[{i}]") for i, entry in enumerate(entries)]


def _parse_rule(entry: dict[str, Any], where: str) -> Rule:
    name, where = _name(entry, where, _RULE_KEYS)
    if entry.get("verdict") not in VERDICTS:
        raise ValueError(f"{where}: 'verdict' must be one of {', '.join(VERDICTS)}, "
                         f"got {entry.get('verdict')!r}")
    patterns, networks = _strings(entry, "user_agents", where), _strings(entry, "networks", where)
    if not patterns and not networks:
        raise ValueError(f"{where}: needs 'user_agents' or 'networks' (or both)")
    nets = []
    for i, network in enumerate(networks):
        try:
            nets.append(ipaddress.ip_network(network.strip()))
        except ValueError as exc:
            raise ValueError(f"{where}: networks[{i}] {network!r} is not an IP network "
                             f"in CIDR form: {exc}") from None
    return Rule(name, entry["verdict"], _compile(patterns, where), tuple(nets))


def _parse_client(entry: dict[str, Any], where: str) -> ClientToken:
    name, where = _name(entry, where, _CLIENT_KEYS)
    if not (patterns := _strings(entry, "user_agents", where)):
        raise ValueError(f"{where}: needs 'user_agents'")
    return ClientToken(name, _compile(patterns, where))


def _name(entry: dict[str, Any], where: str, keys: set[str]) -> tuple[str, str]:
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{where}: 'name' must be 1-40 characters of A-Z a-z 0-9 . _ - "
                         f"(it goes into the verdict's reason), got {name!r}")
    where = f"{where} ({name})"
    if unknown := set(entry) - keys:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; "
                         f"allowed: {', '.join(sorted(keys))}")
    if not isinstance(entry.get("source", ""), str):
        raise ValueError(f"{where}: 'source' must be a string (a URL)")
    return name, where


def _compile(patterns: list[str], where: str) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for i, pattern in enumerate(patterns):
        if not pattern:
            raise ValueError(f"{where}: user_agents[{i}] is empty; it would match every view")
        try:
            compiled.append(re.compile(pattern, re.IGNORECASE))
        except re.error as exc:
            raise ValueError(f"{where}: user_agents[{i}] {pattern!r} is not a valid "
                             f"regular expression: {exc}") from None
    return tuple(compiled)


def _strings(entry: dict[str, Any], key: str, where: str) -> list[str]:
    if not isinstance(value := entry.get(key, []), list) or not all(
            isinstance(v, str) for v in value):
        raise ValueError(f"{where}: '{key}' must be a list of strings")
    return value
