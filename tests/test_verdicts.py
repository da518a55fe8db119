"""Verdicts: mail clients and proxies are opens; prefetchers, scanners and bots are not; a user
agent with no browser or mail-client token is a bot; operators override any shipped rule.

How the rules do against public lists of browsers, crawlers and mail clients is measured by
bench/verdicts.py, not here."""

from __future__ import annotations

import dataclasses
import re
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import pytest
from crawlerdetect import CrawlerDetect

from service.ingest.verdicts import (
    FORWARDED_BY_DEFAULT,
    MAX_REASON,
    VERDICTS,
    Classifier,
    Verdict,
    should_forward,
)

from .conftest import T0, admin_headers, ingest_headers, make_event

GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
YAHOO = "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"
OUTLOOK = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.4266; Pro)"
GMAIL_PREFETCH = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                  "(KHTML, like Gecko) Chrome/42.0.2311.135 Safari/537.36 Edge/12.246 Mozilla/5.0")
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0.0.0 Safari/537.36")
SAFARI = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.4 Safari/605.1.15")
FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0"
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1")
ANDROID = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/124.0.0.0 Mobile Safari/537.36")
APPLE_MAIL = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
              "(KHTML, like Gecko)")  # Apple Mail itself, MPP off: a person
HEADLESS = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "HeadlessChrome/124.0.6367.60 Safari/537.36")


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.load()


def check(classifier: Classifier, *, user_agent, ip) -> Verdict:
    verdict = classifier.classify(user_agent=user_agent, ip=ip)
    assert verdict.verdict in VERDICTS and len(verdict.reason) <= MAX_REASON
    return verdict


@pytest.mark.parametrize(("user_agent", "verdict", "reason"), [
    (GMAIL, "proxy_open", "ua:GoogleImageProxy"),
    (YAHOO, "proxy_open", "ua:YahooMailProxy"),
    (OUTLOOK, "proxy_open", "ua:Outlook"),
    ("Mozilla/4.0 (compatible; ms-office; MSOffice 16)", "proxy_open", "ua:Outlook"),
    ("MacOutlook/16.84.24041420 (Intelx64 Mac OS X 14.4.1 (Build 23E224))", "proxy_open",
     "ua:Outlook"),
    (GMAIL_PREFETCH, "machine_prefetch", "ua:gmail-prefetch"),
    ("Mozilla/5.0", "machine_prefetch", "ua:bare-mozilla"),
    ("Barracuda Sentinel (EE)", "scanner", "ua:barracuda-sentinel"),
    ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", "bot", "ua:Slackbot"),
    ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", "bot",
     "ua:facebookexternalhit"),
    ("Twitterbot/1.0", "bot", "ua:Twitterbot"),
    ("TelegramBot (like TwitterBot)", "bot", "ua:TelegramBot"),
    ("Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)", "bot", "ua:Discordbot"),
    ("WhatsApp/2.23.20.0 A", "bot", "ua:WhatsApp"),
    ("LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
     "bot", "ua:LinkedInBot"),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "bot",
     "ua:Googlebot"),
    ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; "
     "+http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36", "bot", "ua:bingbot"),
    ("curl/8.5.0", "bot", "ua:curl"),
    ("Wget/1.21.4", "bot", "ua:Wget"),
    ("python-requests/2.32.3", "bot", "ua:python-requests"),
    ("Go-http-client/2.0", "bot", "ua:Go-http-client"),
    (HEADLESS, "bot", "ua:HeadlessChrome"),
    # The long tail comes from crawlerdetect.
    ("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", "bot",
     "crawlerdetect:Ahrefs"),
    ("okhttp/4.10.0", "bot", "crawlerdetect:okhttp"),
    (CHROME, "human", "no-match"),
    (SAFARI, "human", "no-match"),
    (FIREFOX, "human", "no-match"),
    (IPHONE, "human", "no-match"),
    (ANDROID, "human", "no-match"),
    (APPLE_MAIL, "human", "no-match"),
])
def test_user_agents(classifier, user_agent, verdict, reason):
    assert check(classifier, user_agent=user_agent, ip=None) == Verdict(verdict, reason)


@pytest.mark.parametrize(("ip", "verdict", "reason"), [
    # Microsoft 365 EOP, each range at its edges, IPv4 and IPv6.
    ("40.92.0.1", "scanner", "ip:microsoft-eop 40.92.0.0/15"),
    ("40.93.255.254", "scanner", "ip:microsoft-eop 40.92.0.0/15"),
    ("40.94.0.1", "human", "no-match"),
    ("40.107.12.34", "scanner", "ip:microsoft-eop 40.107.0.0/16"),
    ("40.108.0.1", "human", "no-match"),
    ("52.100.0.1", "scanner", "ip:microsoft-eop 52.100.0.0/14"),
    ("52.103.255.254", "scanner", "ip:microsoft-eop 52.100.0.0/14"),
    ("52.104.0.1", "human", "no-match"),
    ("104.47.127.254", "scanner", "ip:microsoft-eop 104.47.0.0/17"),
    ("104.47.128.1", "human", "no-match"),
    ("2a01:111:f400:7c00::1", "scanner", "ip:microsoft-eop 2a01:111:f400::/48"),
    ("2A01:111:F403:C000::25", "scanner", "ip:microsoft-eop 2a01:111:f403::/48"),
    ("2a01:111:f401::1", "human", "no-match"),
    ("::ffff:40.107.1.1", "scanner", "ip:microsoft-eop 40.107.0.0/16"),  # IPv4-mapped
    (" 40.107.1.1 ", "scanner", "ip:microsoft-eop 40.107.0.0/16"),
    # Barracuda, Proofpoint, Mimecast.
    ("209.222.80.5", "scanner", "ip:barracuda 209.222.80.0/21"),
    ("209.222.88.1", "human", "no-match"),
    ("64.235.150.1", "scanner", "ip:barracuda 64.235.144.0/20"),
    ("67.231.152.10", "scanner", "ip:proofpoint 67.231.144.0/20"),
    ("148.163.150.1", "scanner", "ip:proofpoint 148.163.128.0/19"),
    ("148.163.160.1", "human", "no-match"),
    ("205.139.110.40", "scanner", "ip:mimecast 205.139.110.0/24"),
    ("170.10.133.7", "scanner", "ip:mimecast 170.10.132.0/23"),
    ("91.220.42.9", "scanner", "ip:mimecast 91.220.42.0/24"),
    ("91.220.43.9", "human", "no-match"),
    # Apple's 17.0.0.0/8 alone is not enough: a person on an Apple network is a person.
    ("17.58.1.1", "human", "no-match"),
    ("127.0.0.1", "human", "no-match"),
    ("2001:db8::1", "human", "no-match"),
])
def test_ips_with_a_browser_user_agent(classifier, ip, verdict, reason):
    assert check(classifier, user_agent=CHROME, ip=ip) == Verdict(verdict, reason)


@pytest.mark.parametrize(("user_agent", "ip", "verdict", "reason"), [
    ("Mozilla/5.0", "17.58.1.1", "machine_prefetch", "ip+ua:apple-mpp 17.0.0.0/8"),
    ("Mozilla/5.0", "16.255.255.254", "machine_prefetch", "ua:bare-mozilla"),
    ("Mozilla/5.0", "2620:149::1", "machine_prefetch", "ua:bare-mozilla"),
    (None, "40.107.1.1", "scanner", "ip:microsoft-eop 40.107.0.0/16"),
    (None, "8.8.8.8", "human", "no-match"),
    # A mail proxy's UA wins over any network rule: real opens are checked first.
    (GMAIL, "40.107.1.1", "proxy_open", "ua:GoogleImageProxy"),
    (OUTLOOK, "52.100.9.9", "proxy_open", "ua:Outlook"),
])
def test_user_agent_and_ip_together(classifier, user_agent, ip, verdict, reason):
    assert check(classifier, user_agent=user_agent, ip=ip) == Verdict(verdict, reason)


@pytest.mark.parametrize("user_agent", [GMAIL, OUTLOOK])
def test_mail_proxies_are_opens_although_crawler_lists_call_them_bots(classifier, user_agent):
    assert CrawlerDetect().is_crawler(user_agent)  # the trap: crawlerdetect alone says bot
    verdict = check(classifier, user_agent=user_agent, ip="66.249.84.1")
    assert verdict.verdict == "proxy_open"
    assert should_forward(verdict.verdict, "skip")


def test_shipped_rules_check_mail_clients_and_proxies_first_and_name_a_source_each(classifier):
    ranks = [VERDICTS.index(rule.verdict) for rule in classifier.rules]
    assert ranks == sorted(ranks) and classifier.rules[0].verdict == "human"
    assert {r.verdict for r in classifier.rules[:5]} == FORWARDED_BY_DEFAULT
    shipped = resources.files("service.ingest") / "data" / "machine_opens.toml"
    data = tomllib.loads(shipped.read_text(encoding="utf-8"))
    assert len(data["rules"]) == len(classifier.rules) and len(data["rules"]) < 200
    assert len(data["last_rules"]) == len(classifier.last_rules) > 0
    assert len(data["clients"]) == len(classifier.clients) > 0
    every = data["rules"] + data["last_rules"] + data["clients"]
    assert all(entry["source"].startswith("https://") for entry in every)


@pytest.mark.parametrize(("user_agent", "ip"), [
    (None, None), ("", ""), ("   ", None), (None, "not-an-ip"), ("", "999.1.1.1"),
])
def test_no_usable_signal_is_a_human_view(classifier, user_agent, ip):
    assert check(classifier, user_agent=user_agent, ip=ip) == Verdict("human", "no-signal")


@pytest.mark.parametrize(("user_agent", "ip"), [
    (CHROME, "999.1.1.1"), (CHROME, "1.2.3.4:8080"), (CHROME, "1.2.3"), (CHROME, "::::"),
    (CHROME, "fe80::1%eth0"), (CHROME, "40.107.1.1/32"), (CHROME, "\x00"), (CHROME, "1" * 10_000),
    ("A" * 1_000_000, "1.2.3.4"), ("1" * 1_000_000, None), (("word" * 20 + " ") * 5000, None),
    ("\x00\uffff\ud800 bot", None), ("é" * 600, "::1"), (b"curl/8.0", 12345), (42, ["1.2.3.4"]),
])
def test_garbage_never_raises_and_stays_cheap(classifier, user_agent, ip):
    started = time.perf_counter()
    check(classifier, user_agent=user_agent, ip=ip)
    assert time.perf_counter() - started < 0.5


def test_a_huge_user_agent_is_still_classified_by_its_start(classifier):
    verdict = check(classifier, user_agent=GMAIL + " x" * 500_000, ip=None)
    assert verdict == Verdict("proxy_open", "ua:GoogleImageProxy")


def write(tmp_path, text: str) -> str:
    path = tmp_path / "rules.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


OPERATOR_RULES = """
# Our uptime monitor sends a bare UA: it is us, not Apple.
[[rules]]
name = "our-monitor"
verdict = "human"
user_agents = ['^Mozilla/5\\.0$']
networks = ["198.51.100.0/24"]
source = "https://wiki.example.com/monitoring"

# We treat Gmail's proxy as a machine (our choice).
[[rules]]
name = "gmail-as-machine"
verdict = "machine_prefetch"
user_agents = ['GoogleImageProxy']

[[rules]]
name = "acme-gateway"
verdict = "scanner"
networks = ["203.0.113.0/24", "2001:db8:ace::/48"]
"""


@pytest.mark.parametrize(("user_agent", "ip", "verdict", "reason"), [
    ("Mozilla/5.0", "198.51.100.7", "human", "ip+ua:our-monitor 198.51.100.0/24"),
    ("Mozilla/5.0", "198.51.101.7", "machine_prefetch", "ua:bare-mozilla"),  # both must match
    (GMAIL, None, "machine_prefetch", "ua:gmail-as-machine"),
    (CHROME, "203.0.113.9", "scanner", "ip:acme-gateway 203.0.113.0/24"),
    (CHROME, "2001:db8:ace:1::5", "scanner", "ip:acme-gateway 2001:db8:ace::/48"),
    # The shipped rules still apply after the operator's.
    (YAHOO, None, "proxy_open", "ua:YahooMailProxy"),
    (CHROME, "40.107.1.1", "scanner", "ip:microsoft-eop 40.107.0.0/16"),
    ("curl/8.5.0", None, "bot", "ua:curl"),
])
def test_operator_rules_override_and_add(tmp_path, user_agent, ip, verdict, reason):
    operator = Classifier.load(write(tmp_path, OPERATOR_RULES))
    assert check(operator, user_agent=user_agent, ip=ip) == Verdict(verdict, reason)


@pytest.mark.parametrize("path", [None, ""])
def test_no_operator_file_means_the_shipped_rules(classifier, path):
    assert Classifier.load(path).rules == classifier.rules


def test_an_empty_operator_file_adds_nothing(tmp_path, classifier):
    assert Classifier.load(write(tmp_path, "# nothing yet\n")).rules == classifier.rules


RULE = '[[rules]]\nname = "x"\nverdict = "bot"\n'


@pytest.mark.parametrize(("text", "problem"), [
    ("rules = [", "not valid TOML"),
    ('[[rule]]\nname = "x"\n', "unknown top-level key(s) ['rule']"),
    ('rules = "curl"\n', "'rules' must be an array of tables"),
    ('[[rules]]\nverdict = "bot"\nuser_agents = ["x"]\n', "rules[0]: 'name' must be"),
    ('[[rules]]\nname = "has space"\nverdict = "bot"\nuser_agents = ["x"]\n', "'name' must be"),
    ('[[rules]]\nname = "x"\nverdict = "robot"\nuser_agents = ["x"]\n',
     "rules[0] (x): 'verdict' must be one of human, proxy_open"),
    (RULE, "rules[0] (x): needs 'user_agents' or 'networks'"),
    (RULE + 'user_agents = "curl"\n', "'user_agents' must be a list of strings"),
    (RULE + "user_agents = ['(']\n", "user_agents[0] '(' is not a valid regular expression"),
    (RULE + "user_agents = ['']\n", "user_agents[0] is empty"),
    (RULE + 'networks = ["10.0.0.999/8"]\n', "networks[0] '10.0.0.999/8' is not an IP network"),
    (RULE + 'networks = ["10.0.0.1/8"]\n', "has host bits set"),
    (RULE + 'networks = [1]\n', "'networks' must be a list of strings"),
    (RULE + 'user_agents = ["x"]\nverdicts = "bot"\n', "unknown key(s) ['verdicts']"),
    (RULE + 'user_agents = ["x"]\nsource = 5\n', "'source' must be a string"),
    ('[[rules]]\nname = "ok"\nverdict = "bot"\nuser_agents = ["x"]\n\n' + RULE,
     "rules[1] (x): needs"),
])
def test_a_malformed_operator_file_is_refused_naming_the_problem(tmp_path, text, problem):
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as excinfo:
        Classifier.load(path)
    assert problem in str(excinfo.value)
    assert str(excinfo.value).startswith(f"MACHINE_OPEN_RULES file {path}: ")


def test_an_unreadable_operator_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot read it"):
        Classifier.load(str(tmp_path / "missing.toml"))
    (tmp_path / "latin1.toml").write_bytes(b"# caf\xe9\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        Classifier.load(str(tmp_path / "latin1.toml"))


@pytest.mark.parametrize(("verdict", "skip", "forward"), [
    ("human", True, True),
    ("proxy_open", True, True),
    ("machine_prefetch", False, True),
    ("scanner", False, True),
    ("bot", False, True),
])
def test_should_forward(verdict, skip, forward):
    assert should_forward(verdict, "skip") is skip
    assert should_forward(verdict, "forward") is forward


def test_should_forward_refuses_an_unknown_mode():
    assert FORWARDED_BY_DEFAULT == {"human", "proxy_open"}
    with pytest.raises(ValueError, match="MACHINE_OPENS"):
        should_forward("human", "sometimes")


def test_a_verdict_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Verdict("human", "no-signal").verdict = "bot"  # type: ignore[misc]


def test_one_classifier_is_safe_to_share_between_threads():
    """A smoke test: one CrawlerDetect shared by all threads fails it now and then."""
    shared = Classifier.load()  # a cold cache, so crawlerdetect runs in every thread
    cases = [(f"Mozilla/5.0 (compatible; AhrefsBot/{i}.0)", "crawlerdetect:Ahrefs") if i % 2
             else (f"okhttp/4.{i}.0", "crawlerdetect:okhttp") for i in range(1000)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            reasons = list(pool.map(
                lambda case: shared.classify(user_agent=case[0], ip=None).reason, cases))
    finally:
        sys.setswitchinterval(interval)
    assert reasons == [reason for _, reason in cases]


# -- issue #18: crawlers and tools with no browser token, mail clients kept ------------------

@pytest.mark.parametrize(("user_agent", "verdict", "reason"), [
    # The examples, by name, as the public crawler lists spell them.
    ("Datadog Agent/7.69.2", "bot", "ua:uptime-monitors"),
    ("Datadog Synthetic", "bot", "ua:browser-automation"),
    ("IFTTT/1.0 (https://ifttt.com/support)", "bot", "ua:cdn-and-webhooks"),
    ("Cloudflare-SpeedTest", "bot", "ua:cdn-and-webhooks"),
    ("Cloudflare-Radar-Scanner", "bot", "ua:cdn-and-webhooks"),
    ("Amazon CloudFront", "bot", "ua:cdn-and-webhooks"),
    ("Bitbucket-Webhooks/2.0", "bot", "ua:cdn-and-webhooks"),
    ("Blackbox Exporter/0.20.0-rc.0", "bot", "ua:uptime-monitors"),
    ("DigiCert DCV/1.1", "bot", "ua:certificate-dcv"),
    ("Google Trust Services (DCV Check)", "bot", "ua:certificate-dcv"),
    ("ClickUpLinkUnfurler/1.0 (+https://clickup.com)", "bot", "ua:cdn-and-webhooks"),
    ("Chrome Privacy Preserving Prefetch Proxy", "machine_prefetch", "ua:chrome-prefetch-proxy"),
    ("DNSScanner", "bot", "ua:cdn-and-webhooks"),
    ("Catchpoint", "bot", "ua:uptime-monitors"),
    ("Mozilla/5.0 (Windows NT 6.3; WOW64; Trident/7.0; rv:11.0; Catchpoint) like Gecko", "bot",
     "ua:uptime-monitors"),
    # No browser engine, no browser family, no mail client: a program's.
    ("AcmeInvoiceViewer/3.1 (Windows NT 10.0)", "bot", "no-client-token"),
    ("Werkzeug/3.1.3", "bot", "no-client-token"),
    # Generic signs, after crawlerdetect: a URL, an address, a host name, an agent for a user.
    (CHROME + " (compatible; AcmeThing/1.0; +https://acme.example/about)", "bot", "ua:url-in-ua"),
    (CHROME + " (contact: ops@acme.example)", "bot", "ua:url-in-ua"),
    (CHROME + " AcmeProbe (status.acme.io)", "bot", "ua:domain-in-ua"),
    (CHROME + " Perplexity-User/1.0", "bot", "ua:on-behalf-of-a-user"),
    (CHROME + "; Selenium", "bot", "ua:browser-automation"),
])
def test_crawlers_and_tools_are_filtered(classifier, user_agent, verdict, reason):
    assert check(classifier, user_agent=user_agent, ip=None) == Verdict(verdict, reason)
    assert not should_forward(verdict, "skip")


@pytest.mark.parametrize(("user_agent", "verdict", "reason"), [
    ("Mail/3731.600.7 CFNetwork/1408.0.4 Darwin/22.5.0", "human", "ua:mail-apps"),
    ("Airmail 1.4 rv:238 (Macintosh; Mac OS X 10.9.2; hr_HR)", "human", "ua:mail-apps"),
    ("Outlook-Express/7.0 (MSIE 7.0; Windows NT 6.1; WOW64; Trident/6.0)", "human", "ua:mail-apps"),
    ("Outlook-iOS/2.0", "human", "ua:outlook-mobile"),
    ("Outlook-Android/2.0", "human", "ua:outlook-mobile"),
    ("Outlook-iOS/709.2042344.prod.iphone (3.21.0)", "human", "ua:outlook-mobile"),
    (IPHONE.replace(" Version/17.4", "").replace(" Safari/604.1", "") + " Outlook-iOS/4.2531.0",
     "human", "ua:outlook-mobile"),
    ("Microsoft Office Outlook/16.100.824 (Mac OS/15.6.1; Desktop; en-US; NonAppStore)",
     "proxy_open", "ua:Outlook"),
    ("Outlook/16.16.18071205 CFNetwork/902.1 Darwin/17.7.0 (x86_64)", "proxy_open", "ua:Outlook"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:115.0) Gecko/20100101 Thunderbird/115.10.1",
     "human", "no-match"),
    ("WindowsMail/17.5.9600.22013", "human", "no-match"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; WebView/3.0) AppleWebKit/537.36 (KHTML, like "
     "Gecko) Chrome/70.0.3538.102 Safari/537.36 Edge/18.19045", "human", "no-match"),
    ("Mozilla/5.0 (Linux; Android 13; SM-S911B Build/TP1A.220624.014; wv) AppleWebKit/537.36 "
     "(KHTML, like Gecko) Version/4.0 Chrome/119.0.6045.163 Mobile Safari/537.36", "human",
     "no-match"),  # Samsung Email, Gmail for Android: the Android web view
    ("Yahoo%20Mail/49268 CFNetwork/1121.2.2 Darwin/19.3.0", "human", "no-match"),
    ("eMClient/9.3.6041.0", "human", "no-match"),
    ("The Bat! 4.0.0.22", "human", "no-match"),
    ("Postbox 1.0b14 (Windows/2009072715)", "human", "no-match"),
    ("NaverMailApp/2.2.2 (Android 10; SM-G986N)", "human", "no-match"),
    (APPLE_MAIL, "human", "no-match"),
    (GMAIL, "proxy_open", "ua:GoogleImageProxy"),
    (YAHOO, "proxy_open", "ua:YahooMailProxy"),
    ("Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/55.0.2883.87 "
     "Safari/537.36 (via secureurl.fwdcdn.com - mail.ukr.net proxy)", "proxy_open",
     "ua:ukrnet-mail-proxy"),  # a host name in it, yet a real open
])
def test_mail_clients_and_proxies_are_kept(classifier, user_agent, verdict, reason):
    assert check(classifier, user_agent=user_agent, ip=None) == Verdict(verdict, reason)
    assert should_forward(verdict, "skip")


@pytest.mark.parametrize("user_agent", [
    # Device models that crawlerdetect's words match: the model slot is not the software.
    "Mozilla/5.0 (Linux; Android 7.0; C Bot Tab 70) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/78.0.3904.108 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; Spider 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Dalvik/2.1.0 (Linux; U; Android 6.0; SMART_4G_Speedy_5inch Build/MRA58K)",
    # Chromium's network stack is no cron job.
    "com.tcl.browser/660067 (Linux; U; Android 12; tr_TR; Chromecast HD; "
    "Build/STTK.230808.004; Cronet/114.0.5735.33)",
    # Browsers without an engine token.
    "Opera/9.80 (J2ME/MIDP; Opera Mini/9.80 (S60; SymbOS; Opera Mobi/23.348; U; en) Presto/2.5.25",
    "UCWEB/2.0 (MIDP-2.0; U; Adr 4.2.2; en-US; Karbonn_A91) U2/1.0.0 UCBrowser/9.1.1.420 Mobile",
    "Nokia2730c-1/2.0 (10.47) Profile/MIDP-2.1 Configuration/CLDC-1.1",
])
def test_browsers_that_look_odd_are_people(classifier, user_agent):
    assert check(classifier, user_agent=user_agent, ip=None) == Verdict("human", "no-match")


def test_a_bot_dressed_as_an_android_browser_is_still_caught(classifier):
    googlebot = ("Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
                 "(KHTML, like Gecko) Chrome/126.0.6478.126 Mobile Safari/537.36 "
                 "(compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)")
    assert check(classifier, user_agent=googlebot, ip=None) == Verdict(
        "bot", "crawlerdetect:Ahrefs")


def test_no_user_agent_is_not_judged_by_the_client_tokens(classifier):
    """Internal services post events without a userAgent: still a person's view."""
    assert check(classifier, user_agent=None, ip="8.8.8.8") == Verdict("human", "no-match")


OVERRIDES = """
# Our own desktop viewer has no browser token.
[[clients]]
name = "acme-viewer"
user_agents = ['^AcmeInvoiceViewer/']
source = "https://wiki.example.com/viewer"

# We run Datadog synthetics as a person would, on purpose.
[[rules]]
name = "our-synthetics"
verdict = "human"
user_agents = ['Datadog']

# We count Outlook mobile's fetches as machine prefetches.
[[rules]]
name = "outlook-mobile-prefetch"
verdict = "machine_prefetch"
user_agents = ['Outlook-(?:iOS|Android)/']

# Our partners' portal adds its help URL: a person's browser.
[[rules]]
name = "partner-portal"
verdict = "human"
user_agents = ['\\+https://partner\\.example/help']

[[last_rules]]
name = "our-scripts"
verdict = "bot"
user_agents = ['AcmeScript']
"""


@pytest.mark.parametrize(("user_agent", "verdict", "reason"), [
    ("AcmeInvoiceViewer/3.1 (Windows NT 10.0)", "human", "no-match"),  # a client of ours
    ("Datadog Agent/7.69.2", "human", "ua:our-synthetics"),  # beats a shipped bot rule
    ("Outlook-iOS/2.0", "machine_prefetch", "ua:outlook-mobile-prefetch"),  # and a human one
    (CHROME + " (+https://partner.example/help)", "human", "ua:partner-portal"),  # a last rule
    (CHROME + " AcmeScript/1.0", "bot", "ua:our-scripts"),
    # The shipped rules still apply after the operator's.
    ("Bitbucket-Webhooks/2.0", "bot", "ua:cdn-and-webhooks"),
    ("SomeOtherTool/1.0", "bot", "no-client-token"),
])
def test_an_operator_overrides_any_shipped_rule(tmp_path, user_agent, verdict, reason):
    operator = Classifier.load(write(tmp_path, OVERRIDES))
    assert check(operator, user_agent=user_agent, ip=None) == Verdict(verdict, reason)


@pytest.mark.parametrize(("text", "problem"), [
    ('clients = "webkit"\n', "'clients' must be an array of tables ([[clients]])"),
    ('[[clients]]\nname = "x"\n', "clients[0] (x): needs 'user_agents'"),
    ('[[clients]]\nname = "x"\nuser_agents = ["x"]\nverdict = "human"\n',
     "clients[0] (x): unknown key(s) ['verdict']"),
    ('[[clients]]\nname = "x"\nuser_agents = ["("]\n', "is not a valid regular expression"),
    ('[[last_rules]]\nname = "x"\nverdict = "bot"\n', "last_rules[0] (x): needs 'user_agents'"),
])
def test_malformed_clients_and_last_rules_are_refused(tmp_path, text, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        Classifier.load(write(tmp_path, text))


def test_the_verdict_and_its_reason_are_visible_per_event_and_in_the_counts(client, services):
    """The issue's path: POST /v1/events with a userAgent, MACHINE_OPENS=skip (the default)."""
    services.vault.set_token("loc_1", access_token="pit-token-000000", now=T0)
    posted = {"Datadog Agent/7.69.2": ("bot", "ua:uptime-monitors", "filtered"),
              "Bitbucket-Webhooks/2.0": ("bot", "ua:cdn-and-webhooks", "filtered"),
              "Outlook-iOS/2.0": ("human", "ua:outlook-mobile", "queued"),
              CHROME: ("human", "no-match", "queued")}
    for i, (ua, (verdict, reason, status)) in enumerate(posted.items()):
        resp = client.post("/v1/events", headers=ingest_headers(),
                           json=make_event(invoiceId=f"inv_{i}", userAgent=ua))
        assert resp.status_code == 202 and resp.json["status"] == status, resp.json
        read = client.get(f"/v1/events/{resp.json['id']}", headers=ingest_headers()).json
        assert (read["verdict"], read["verdictReason"], read["status"]) == (
            verdict, reason, status)
    counts = client.get("/v1/locations/loc_1", headers=admin_headers()).json["verdicts"]
    assert counts == {"bot": 2, "human": 2}
