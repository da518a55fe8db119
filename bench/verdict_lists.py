"""The labelled user-agent lists that ``bench/verdicts.py`` measures the verdicts against.

None of them is written here except the mail clients and proxies (``bench/data/mail_clients.txt``,
a source per entry). The others are read from the packages that ship them, installed with
``pip install -r bench/requirements-verdicts.txt``; nothing is copied into the repository:

- ``fake-useragent`` (PyPI, Apache-2.0): ``fake_useragent/data/browsers.jsonl``, real
  browsers' user agents with their share of traffic;
- ``crawler-user-agents`` (PyPI, MIT): ``crawleruseragents/crawler-user-agents.json``, every
  pattern's ``instances``, real crawler and tool user agents;
- ``device-detector`` (PyPI, a port of Matomo's Device Detector, LGPL-3.0): the upstream test
  fixtures it ships (``device_detector/tests/fixtures/upstream/*.yml``), each user agent
  labelled with what Matomo says it is: a bot (``bots.yml``), a browser, a mail client
  (``client.type: pim``), an HTTP library or a feed reader.

Every list is split into a development part and a held-out part by a hash of the user agent
(``part``), fixed before the rules were tuned: only the development part was looked at while
writing rules.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
MAIL_CLIENTS = HERE / "data" / "mail_clients.txt"
HELD_OUT_PERCENT = 30  # of every list, chosen by hash before any rule was tuned

# What a list's entries should get: "filtered" (not forwarded under MACHINE_OPENS=skip) or
# "forwarded" (human or proxy_open). Mail entries may also name the verdict they must get.
FILTERED, FORWARDED = "filtered", "forwarded"


@dataclass
class UAList:
    """One labelled list: its user agents and what each should get."""

    name: str
    expect: str  # FILTERED or FORWARDED
    origin: str  # package==version and file, or our own file
    entries: dict[str, str | None] = field(default_factory=dict)  # UA -> required verdict

    def add(self, user_agent: str, verdict: str | None = None) -> None:
        ua = user_agent.strip()
        if ua:
            self.entries.setdefault(ua, verdict)

    def part(self, which: str) -> dict[str, str | None]:
        """The entries of one part: ``dev``, ``held-out`` or ``all``."""
        if which == "all":
            return dict(self.entries)
        return {ua: v for ua, v in self.entries.items() if part(ua) == which}


def part(user_agent: str) -> str:
    """``held-out`` for about HELD_OUT_PERCENT % of user agents, by hash; else ``dev``."""
    digest = hashlib.sha256(user_agent.encode("utf-8")).digest()
    return "held-out" if int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT else "dev"


def version(package: str) -> str:
    return f"{package}=={metadata.version(package)}"


def fake_useragent_browsers() -> UAList:
    """fake-useragent's real-world browser user agents."""
    data = resources.files("fake_useragent") / "data" / "browsers.jsonl"
    out = UAList("fake-useragent browsers", FORWARDED,
                 f"{version('fake-useragent')} fake_useragent/data/browsers.jsonl")
    for line in data.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.add(json.loads(line)["useragent"])
    return out


def crawler_user_agents() -> UAList:
    """crawler-user-agents' instances: every example user agent of every pattern."""
    data = resources.files("crawleruseragents") / "crawler-user-agents.json"
    out = UAList("crawler-user-agents instances", FILTERED,
                 f"{version('crawler-user-agents')} crawleruseragents/crawler-user-agents.json")
    for entry in json.loads(data.read_text(encoding="utf-8")):
        for ua in entry.get("instances", []):
            out.add(ua)
    return out


def matomo_fixtures() -> list[UAList]:
    """Matomo Device Detector's test fixtures, by what Matomo labels each user agent."""
    root = resources.files("device_detector") / "tests" / "fixtures" / "upstream"
    where = f"{version('device-detector')} device_detector/tests/fixtures/upstream/"
    bots = UAList("Matomo bots", FILTERED, where + "bots.yml")
    libraries = UAList("Matomo HTTP libraries", FILTERED, where + "*.yml, client.type library")
    feeds = UAList("Matomo feed readers", FILTERED, where + "*.yml, client.type feed reader")
    browsers = UAList("Matomo browsers", FORWARDED, where + "*.yml, client.type browser")
    mail = UAList("Matomo mail clients", FORWARDED, where + "*.yml, client.type pim")
    by_type = {"library": libraries, "feed reader": feeds, "browser": browsers, "pim": mail}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for path in sorted(root.iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".yml"):
            continue
        for item in yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or []:
            ua = item.get("user_agent")
            if not isinstance(ua, str):
                continue
            if path.name == "bots.yml" or item.get("bot"):
                bots.add(ua)
            elif (target := by_type.get((item.get("client") or {}).get("type"))) is not None:
                target.add(ua)
    return [bots, libraries, feeds, browsers, mail]


_MAIL_LINE = re.compile(r"^(client|proxy) (.+)$")
_MAIL_KIND = {"client": None, "proxy": "proxy_open"}  # what the verdict must be, beyond forwarded


def mail_clients() -> UAList:
    """Our own list of mail clients and mail image proxies (``bench/data/mail_clients.txt``).

    Lines: ``client <user agent>`` (must be forwarded: ``human`` or ``proxy_open``) or
    ``proxy <user agent>`` (a mail provider's image proxy: must be ``proxy_open``); ``#`` lines
    name the source of the entries below them.
    """
    out = UAList("mail clients and proxies (ours)", FORWARDED, "bench/data/mail_clients.txt")
    for n, line in enumerate(MAIL_CLIENTS.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if not (m := _MAIL_LINE.match(line)):
            raise ValueError(f"{MAIL_CLIENTS}:{n}: expected 'client|proxy <user agent>'")
        out.add(m[2], _MAIL_KIND[m[1]])
    return out


def all_lists() -> list[UAList]:
    """Every list, machines first."""
    matomo = matomo_fixtures()
    return [crawler_user_agents(), *matomo[:3], fake_useragent_browsers(), *matomo[3:],
            mail_clients()]
