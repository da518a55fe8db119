"""Give every recorded view a verdict: a person, or a machine that fetched the pixel.

A view is checked against, in order, first match wins:

1. the operator's rules (``MACHINE_OPEN_RULES``, a TOML file), in their file's order;
2. the shipped rules (``service/ingest/data/machine_opens.toml``), sorted by verdict so that mail
   providers' image proxies (real opens) come before any scanner or bot rule: crawler lists
   call Gmail's GoogleImageProxy a bot, and a skipped proxy open is a lost open;
3. crawlerdetect's user-agent list, for the long tail of bots.

Nothing matches: ``human``. The data file documents its format and every entry's source.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import itertools
import re
import threading
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from crawlerdetect import CrawlerDetect

VERDICTS = ("human", "proxy_open", "machine_prefetch", "scanner", "bot")
FORWARDED_BY_DEFAULT = {"human", "proxy_open"}  # MACHINE_OPENS=skip forwards only these
SHIPPED_RULES = "data/machine_opens.toml"
MAX_USER_AGENT = 512  # what the pixel stores; it also bounds the regex work per view
MAX_REASON = 100  # events.verdict_reason is VARCHAR(100)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")
_RULE_KEYS = {"name", "verdict", "user_agents", "networks", "source"}
# crawlerdetect's catch-all pattern starts `[a-z0-9\-_]*(bot|crawl|...)`, which costs time
# quadratic in the length of a run of such characters (a 1 KB run: ~0.5 s). No real user
# agent has a run of 64, so runs are cut to 64 before it looks.
_LONG_RUN = re.compile(r"[\w-]{65,}")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Verdict:
    """What fetched the pixel, and why we think so."""

    verdict: str  # human | proxy_open | machine_prefetch | scanner | bot
    reason: str  # short, machine-readable: "ua:GoogleImageProxy", "ip:microsoft-eop 40.107.0.0/16"


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


class Classifier:
    """Classify views by user agent and IP. Build one with ``load``; share it across threads."""

    def __init__(self, rules: Iterable[Rule]):
        self.rules = tuple(rules)
        # CrawlerDetect keeps its last match on the instance (is_crawler, then get_matches),
        # so each thread gets its own; the shared cache in front of it is thread-safe.
        self._local = threading.local()
        self._crawler_match = functools.lru_cache(maxsize=4096)(self._detect_crawler)
        # The rules a user agent can match, worked out once per user agent: most views
        # come from a few mail clients and proxies, and the regexes are most of the cost.
        self._rules_for = functools.lru_cache(maxsize=4096)(self._candidates)

    @classmethod
    def load(cls, extra_rules_path: str | None = None) -> Classifier:
        """Read the shipped rules and, checked first, an operator's file.

        :raises ValueError: the operator's file is missing or malformed; the message names
            the file, the rule and the problem.
        """
        shipped_file = resources.files(__package__) / SHIPPED_RULES
        shipped = parse_rules(_read(shipped_file, SHIPPED_RULES), SHIPPED_RULES)
        shipped.sort(key=lambda rule: VERDICTS.index(rule.verdict))  # proxy_open first
        extra: list[Rule] = []
        if extra_rules_path:
            origin = f"MACHINE_OPEN_RULES file {extra_rules_path}"
            extra = parse_rules(_read(Path(extra_rules_path), origin), origin)
        return cls([*extra, *shipped])

    def classify(self, *, user_agent: str | None, ip: str | None) -> Verdict:
        """Give a view its verdict; never raises, whatever the inputs."""
        ua = (user_agent[:MAX_USER_AGENT].strip() or None) if isinstance(user_agent, str) else None
        addr = _parse_ip(ip)
        if ua is None and addr is None:
            return Verdict("human", "no-signal")
        for rule in self._rules_for(ua):
            if reason := rule.match_address(addr):
                return Verdict(rule.verdict, reason[:MAX_REASON])
        if ua is not None and (hit := self._crawler_match(ua)):
            return Verdict("bot", f"crawlerdetect:{hit}"[:MAX_REASON])
        return Verdict("human", "no-match")

    def _candidates(self, user_agent: str | None) -> tuple[Rule, ...]:
        return tuple(rule for rule in self.rules if rule.matches_user_agent(user_agent))

    def _detect_crawler(self, user_agent: str) -> str | None:
        detector = getattr(self._local, "detector", None)
        if detector is None:
            detector = self._local.detector = CrawlerDetect()
        text = _LONG_RUN.sub(lambda m: m[0][:64], user_agent)
        return detector.get_matches() if detector.is_crawler(text) else None


def should_forward(verdict: str, machine_opens: str) -> bool:
    """Whether a view with this verdict goes to HighLevel under ``MACHINE_OPENS``."""
    if machine_opens == "forward":
        return True
    if machine_opens == "skip":
        return verdict in FORWARDED_BY_DEFAULT
    raise ValueError(f"MACHINE_OPENS must be 'skip' or 'forward', not {machine_opens!r}")


def parse_rules(data: dict[str, Any], origin: str) -> list[Rule]:
    """Validate a parsed rules document and build its rules, in file order."""
    if unknown := set(data) - {"rules"}:
        raise ValueError(f"{origin}: unknown top-level key(s) {sorted(unknown)}; "
                         "rules go in [[rules]] tables")
    entries = data.get("rules", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{origin}: 'rules' must be an array of tables ([[rules]])")
    return [_parse_rule(entry, f"{origin}: rules[{i}]") for i, entry in enumerate(entries)]


def _parse_rule(entry: dict[str, Any], where: str) -> Rule:
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{where}: 'name' must be 1-40 characters of A-Z a-z 0-9 . _ - "
                         f"(it goes into the verdict's reason), got {name!r}")
    where = f"{where} ({name})"
    if unknown := set(entry) - _RULE_KEYS:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; "
                         f"allowed: {', '.join(sorted(_RULE_KEYS))}")
    if entry.get("verdict") not in VERDICTS:
        raise ValueError(f"{where}: 'verdict' must be one of {', '.join(VERDICTS)}, "
                         f"got {entry.get('verdict')!r}")
    if not isinstance(entry.get("source", ""), str):
        raise ValueError(f"{where}: 'source' must be a string (a URL)")
    patterns, networks = _strings(entry, "user_agents", where), _strings(entry, "networks", where)
    if not patterns and not networks:
        raise ValueError(f"{where}: needs 'user_agents' or 'networks' (or both)")
    compiled = []
    for i, pattern in enumerate(patterns):
        if not pattern:
            raise ValueError(f"{where}: user_agents[{i}] is empty; it would match every view")
        try:
            compiled.append(re.compile(pattern, re.IGNORECASE))
        except re.error as exc:
            raise ValueError(f"{where}: user_agents[{i}] {pattern!r} is not a valid "
                             f"regular expression: {exc}") from None
    nets = []
    for i, network in enumerate(networks):
        try:
            nets.append(ipaddress.ip_network(network.strip()))
        except ValueError as exc:
            raise ValueError(f"{where}: networks[{i}] {network!r} is not an IP network "
                             f"in CIDR form: {exc}") from None
    return Rule(name, entry["verdict"], tuple(compiled), tuple(nets))


def _strings(entry: dict[str, Any], key: str, where: str) -> list[str]:
    if not isinstance(value := entry.get(key, []), list) or not all(
            isinstance(v, str) for v in value):
        raise ValueError(f"{where}: '{key}' must be a list of strings")
    return value


def _read(path: Any, origin: str) -> dict[str, Any]:
    """Parse a TOML file (a ``Path`` or an ``importlib.resources`` traversable)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{origin}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{origin}: not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{origin}: not valid TOML: {exc}") from None


def _parse_ip(ip: str | None) -> Address | None:
    """The client address, IPv4-mapped IPv6 as IPv4; None for anything unparseable."""
    if not isinstance(ip, str) or len(ip) > 64:
        return None
    try:
        addr = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr
