"""Give every recorded view a verdict: a person, or a machine that fetched the pixel.

A view is checked against, in order, first match wins:

1. the operator's rules (``MACHINE_OPEN_RULES``, a TOML file), in their file's order;
2. the shipped rules (``service/ingest/data/machine_opens.toml``), sorted by verdict so that mail
   clients and providers' image proxies (real opens) come before any scanner or bot rule:
   crawler lists call Gmail's GoogleImageProxy a bot, and a skipped proxy open is a lost open;
3. crawlerdetect's user-agent list (a dependency, MIT), for the long tail of bots, after the
   device-model slot of an Android user agent is blanked (models such as "VR BOT 552" or
   "Spider 8" name hardware, yet match its words);
4. the ``[[last_rules]]`` of both files (generic signs of a machine: a URL in the user agent);
5. the client tokens (``[[clients]]`` in the same files): a user agent that carries no browser
   engine and no mail-client token is no person's (``bot``, reason ``no-client-token``).

Nothing matches, or no user agent at all: ``human``. The data file documents its format and
every entry's source; ``verdict_rules`` reads it.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from crawlerdetect import CrawlerDetect

from .verdict_rules import (
    VERDICTS,
    Address,
    ClientToken,
    Rule,
    parse_clients,
    parse_rules,
    read_rules_file,
)

__all__ = ["VERDICTS", "Classifier", "Rule", "Verdict", "should_forward"]

FORWARDED_BY_DEFAULT = {"human", "proxy_open"}  # MACHINE_OPENS=skip forwards only these
SHIPPED_RULES = "data/machine_opens.toml"
MAX_USER_AGENT = 512  # what the pixel stores; it also bounds the regex work per view
MAX_REASON = 100  # events.verdict_reason is VARCHAR(100)
NO_CLIENT_TOKEN = "no-client-token"
# crawlerdetect's catch-all pattern starts `[a-z0-9\-_]*(bot|crawl|...)`, which costs time
# quadratic in the length of a run of such characters (a 1 KB run: ~0.5 s). No real user
# agent has a run of 64, so runs are cut to 64 before it looks.
_LONG_RUN = re.compile(r"[\w-]{65,}")
# "(Linux; U; Android 7.0; en-us; C Bot Tab 70 Build/NRD90M)": the slot after the Android
# version (and an optional locale) names the device. Bots that dress as Android browsers put
# their own name after the engine ("... Mobile Safari/537.36 (compatible; Googlebot/2.1)").
# Cronet, Chromium's network stack in Android apps and TVs ("...; Cronet/114.0.5735.33)"),
# is no cron job, which crawlerdetect's "Cron" takes it for.
_CRONET = re.compile(r"\bCronet/")
_ANDROID_MODEL = re.compile(r"(Andr[o0]id [\d.]+; (?:[a-z]{2}[-_][a-z]{2}; )?)([^;)]+)", re.I)


@dataclass(frozen=True)
class Verdict:
    """What fetched the pixel, and why we think so."""

    verdict: str  # human | proxy_open | machine_prefetch | scanner | bot
    reason: str  # short, machine-readable: "ua:GoogleImageProxy", "ip:microsoft-eop 40.107.0.0/16"


class Classifier:
    """Classify views by user agent and IP. Build one with ``load``; share it across threads."""

    def __init__(self, rules: Iterable[Rule], clients: Iterable[ClientToken] = (),
                 last_rules: Iterable[Rule] = ()):
        self.rules = tuple(rules)
        self.last_rules = tuple(last_rules)
        self.clients = tuple(clients)
        # CrawlerDetect keeps its last match on the instance (is_crawler, then get_matches),
        # so each thread gets its own; the shared cache in front of it is thread-safe.
        self._local = threading.local()
        self._crawler_match = functools.lru_cache(maxsize=4096)(self._detect_crawler)
        # The rules a user agent can match, worked out once per user agent: most views
        # come from a few mail clients and proxies, and the regexes are most of the cost.
        self._rules_for = functools.lru_cache(maxsize=4096)(self._candidates)
        self._last_rules_for = functools.lru_cache(maxsize=4096)(self._last_candidates)
        self._is_client = functools.lru_cache(maxsize=4096)(self._has_client_token)

    @classmethod
    def load(cls, extra_rules_path: str | None = None) -> Classifier:
        """Read the shipped rules and, checked first, an operator's file.

        :raises ValueError: the operator's file is missing or malformed; the message names
            the file, the rule and the problem.
        """
        shipped_data = read_rules_file(resources.files(__package__) / SHIPPED_RULES,
                                       SHIPPED_RULES)
        shipped = parse_rules(shipped_data, SHIPPED_RULES)
        shipped.sort(key=lambda rule: VERDICTS.index(rule.verdict))  # real opens first
        last = parse_rules(shipped_data, SHIPPED_RULES, "last_rules")
        clients = parse_clients(shipped_data, SHIPPED_RULES)
        extra: list[Rule] = []
        if extra_rules_path:
            origin = f"MACHINE_OPEN_RULES file {extra_rules_path}"
            data = read_rules_file(Path(extra_rules_path), origin)
            extra = parse_rules(data, origin)
            last = [*parse_rules(data, origin, "last_rules"), *last]
            clients = [*parse_clients(data, origin), *clients]
        return cls([*extra, *shipped], clients, last)

    def classify(self, *, user_agent: str | None, ip: str | None) -> Verdict:
        """Give a view its verdict; never raises, whatever the inputs."""
        ua = (user_agent[:MAX_USER_AGENT].strip() or None) if isinstance(user_agent, str) else None
        addr = _parse_ip(ip)
        if ua is None and addr is None:
            return Verdict("human", "no-signal")
        for rule in self._rules_for(ua):
            if reason := rule.match_address(addr):
                return Verdict(rule.verdict, reason[:MAX_REASON])
        if ua is not None:
            if hit := self._crawler_match(ua):
                return Verdict("bot", f"crawlerdetect:{hit}"[:MAX_REASON])
            for rule in self._last_rules_for(ua):
                if reason := rule.match_address(addr):
                    return Verdict(rule.verdict, reason[:MAX_REASON])
            if not self._is_client(ua):
                return Verdict("bot", NO_CLIENT_TOKEN)
        return Verdict("human", "no-match")

    def _candidates(self, user_agent: str | None) -> tuple[Rule, ...]:
        return tuple(rule for rule in self.rules if rule.matches_user_agent(user_agent))

    def _last_candidates(self, user_agent: str) -> tuple[Rule, ...]:
        return tuple(rule for rule in self.last_rules if rule.matches_user_agent(user_agent))

    def _has_client_token(self, user_agent: str) -> bool:
        return any(client.matches(user_agent) for client in self.clients)

    def _detect_crawler(self, user_agent: str) -> str | None:
        detector = getattr(self._local, "detector", None)
        if detector is None:
            detector = self._local.detector = CrawlerDetect()
        text = _LONG_RUN.sub(lambda m: m[0][:64], user_agent)
        text = _CRONET.sub("Chromium-net/", _ANDROID_MODEL.sub(r"\1device", text))
        return detector.get_matches() if detector.is_crawler(text) else None


def should_forward(verdict: str, machine_opens: str) -> bool:
    """Whether a view with this verdict goes to HighLevel under ``MACHINE_OPENS``."""
    if machine_opens == "forward":
        return True
    if machine_opens == "skip":
        return verdict in FORWARDED_BY_DEFAULT
    raise ValueError(f"MACHINE_OPENS must be 'skip' or 'forward', not {machine_opens!r}")


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
