"""Verdict evaluation: how well the shipped rules tell machines from people, on public lists.

Not a speed benchmark: it measures precision and recall of the verdicts against labelled
user-agent lists that nobody here wrote (``bench/verdict_lists.py`` reads them from the
packages that ship them), plus our own list of mail clients and mail image proxies
(``bench/data/mail_clients.txt``, a source per entry). Every list is split by a hash of the
user agent into a development part (70%), the only part looked at while the rules were
written, and a held-out part (30%), reported separately.

Each user agent goes through ``Classifier.classify`` (what every view gets, with no client
address) and counts as *filtered* when its verdict is not forwarded under the default
``MACHINE_OPENS=skip`` (``machine_prefetch``, ``scanner``, ``bot``). Then a sample of them goes
through ``POST /v1/events`` of a real app (Flask's test client, a fresh SQLite file) and
``GET /v1/events/<id>``, to show the service gives the same verdict, reason and status.

    pip install -r bench/requirements-verdicts.txt     # the lists' packages
    .venv/bin/python bench/verdicts.py                 # 1-2 minutes; bench/results-verdicts.md
    .venv/bin/python bench/verdicts.py --root ../main --output bench/out/main.md  # another tree
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from verdict_lists import FILTERED, HELD_OUT_PERCENT, UAList, all_lists  # noqa: E402

ROOT = HERE.parent
# bench/common.py (machine facts, tables) is imported after the service, so that --root
# decides which checkout's service is measured.

PARTS = ("dev", "held-out")
EVERYDAY_PEOPLE = ("fake-useragent browsers", "Matomo mail clients",
                   "mail clients and proxies (ours)")
ANALYSIS = "## What the figures say"  # hand-written, below the numbers; kept on a rerun
PACKAGES = ("fake-useragent", "crawler-user-agents", "device-detector", "crawlerdetect",
            "PyYAML")
# Crawler lists also carry mail clients and providers' image proxies (GoogleImageProxy,
# Outlook), which the issue requires forwarded: those entries are counted apart.
MAIL_CLIENT_REASONS = ("ua:mail-apps", "ua:outlook-mobile")  # and every proxy_open


@dataclass
class Tally:
    """One list's part: how many, how many filtered, and the mistakes."""

    n: int = 0
    filtered: int = 0
    wrong: list[tuple[str, str, str]] = field(default_factory=list)  # (ua, verdict, reason)
    mail: list[tuple[str, str]] = field(default_factory=list)  # crawler-list mail entries
    reasons: Counter = field(default_factory=Counter)


def judge(classifier, ua_list: UAList, part: str, forwarded: set[str]) -> Tally:
    """Classify one part of one list."""
    tally = Tally()
    for ua, required in sorted(ua_list.part(part).items()):
        v = classifier.classify(user_agent=ua, ip=None)
        is_filtered = v.verdict not in forwarded
        if ua_list.expect == FILTERED and (v.verdict == "proxy_open"
                                           or v.reason in MAIL_CLIENT_REASONS):
            tally.mail.append((ua, v.reason))
            continue
        tally.n += 1
        tally.filtered += is_filtered
        tally.reasons[v.reason.split(":")[0] if ":" in v.reason else v.reason] += 1
        if ua_list.expect == FILTERED:
            ok = is_filtered
        else:
            ok = not is_filtered and (required is None or v.verdict == required)
        if not ok:
            tally.wrong.append((ua, v.verdict, v.reason))
    return tally


def spot_check_http(lists: list[UAList], classifier, per_list: int) -> tuple[int, list[str]]:
    """Post a sample through ``POST /v1/events`` and read each back: same verdict?"""
    from flask.testing import FlaskClient  # noqa: F401 - Flask is what the service runs on

    from service import create_app

    sample = [ua for ua_list in lists for part in PARTS
              for ua in sorted(ua_list.part(part))[:per_list]]
    key = "ik_bench_verdicts_" + "x" * 24
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({"RELAY_ENV": "test", "DATABASE_URL": f"sqlite:///{tmp}/relay.db",
                          "INGEST_API_KEYS": [key], "ADMIN_API_KEYS": ["ak_" + "y" * 40],
                          "PIXEL_SIGNING_KEYS": ["p" * 32],
                          "TOKEN_ENCRYPTION_KEYS": ["kW0kxdOCNS-ULOAvUDRPljD0QeCqBJ6U9ja_vIh_Kkg="],
                          "HIGHLEVEL_BASE_URL": "http://127.0.0.1:9", "LOG_LEVEL": "WARNING"})
        assert app.test_cli_runner().invoke(args=["db", "upgrade"]).exit_code == 0
        client, auth = app.test_client(), {"Authorization": f"Bearer {key}"}
        mismatches = []
        for start in range(0, len(sample), 500):
            chunk = sample[start:start + 500]
            events = [{"locationId": "loc_bench", "invoiceId": f"inv_{start + i}",
                       "userAgent": ua} for i, ua in enumerate(chunk)]
            resp = client.post("/v1/events", json={"events": events}, headers=auth)
            assert resp.status_code == 202, resp.get_data(as_text=True)
            for ua, answer in zip(chunk, resp.get_json()["events"], strict=True):
                got = client.get(f"/v1/events/{answer['id']}", headers=auth).get_json()
                want = classifier.classify(user_agent=ua, ip=None)
                status = "queued" if want.verdict in {"human", "proxy_open"} else "filtered"
                if (got["verdict"], got["verdictReason"], answer["status"]) != (
                        want.verdict, want.reason, status):
                    mismatches.append(f"{ua!r}: API {got['verdict']}/{got['verdictReason']}/"
                                      f"{answer['status']}, function {want.verdict}/{want.reason}")
        app.extensions["service"].engine.dispose()
    return len(sample), mismatches


def pct(a: int, b: int) -> str:
    return f"{100 * a / b:.2f}%" if b else "-"


def report(args, lists, tallies, confusion, http, timing) -> str:
    from common import command_line, machine_info, markdown_table

    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Verdicts against public user-agent lists",
        "",
        f"Run {started}: `{command_line()}`",
        f"(service from `{args.root}`).",
        "",
        "Each user agent is classified by `Classifier.classify(user_agent=..., ip=None)`, the"
        " function every view goes through; *filtered* means a verdict that "
        "`MACHINE_OPENS=skip` (the default) does not forward: `machine_prefetch`, `scanner`"
        " or `bot`. Every list is split by SHA-256 of the user agent into a development part"
        f" ({100 - HELD_OUT_PERCENT}%) and a held-out part ({HELD_OUT_PERCENT}%); the rules"
        " were written looking at the development part only.",
        "",
        "## Per list",
        "",
    ]
    rows = []
    for ua_list in lists:
        for part in PARTS:
            t = tallies[ua_list.name, part]
            people_filtered = confusion[part][2]
            everyday = sum(tallies[name, part].filtered for name in EVERYDAY_PEOPLE)
            if ua_list.expect == FILTERED:
                rows.append([f"{ua_list.name} (filtered)", part, t.n, t.filtered,
                             t.n - t.filtered, pct(t.filtered, t.n),
                             pct(t.filtered, t.filtered + people_filtered),
                             pct(t.filtered, t.filtered + everyday), len(t.wrong)])
            else:
                kept = t.n - t.filtered
                rows.append([f"{ua_list.name} (forwarded)", part, t.n, t.filtered, kept,
                             pct(kept, t.n), "n/a", "n/a", len(t.wrong)])
    lines += [markdown_table(["list (should be)", "part", "user agents", "filtered",
                              "forwarded", "recall", "precision, all people",
                              "precision, everyday people", "wrong"], rows), ""]
    lines += ["Machines: crawler-user-agents, Matomo bots, HTTP libraries and feed readers. "
              "People: fake-useragent and Matomo browsers, Matomo's and our mail clients. "
              "*Recall*: the share of the list that got its class (filtered for machines, "
              "forwarded for people). *Precision* (machine lists): of what the filter took "
              "from this list plus every people list of the same part, the share that are "
              "machines (*everyday people*: fake-useragent's browsers and the two mail lists, "
              "without Matomo's long tail of browsers); a people list has no filtering "
              "precision of its own (everything in "
              "it is a person), its errors are its filtered count. *Wrong* also counts a "
              "mail proxy forwarded as `human` instead of `proxy_open`.", "",
              "## Precision and recall, pooled", "",
              "Positive = filtered (a machine). Precision: of the user agents filtered, the "
              "share that are machines; recall: of the machines, the share filtered. Pooled "
              "over the lists, so the figures depend on the lists' sizes; the per-list rows "
              "above do not.", ""]
    rows = []
    for part in PARTS:
        tp, fn, fp, tn = confusion[part]
        rows.append([part, tp, fn, fp, tn, pct(tp, tp + fp), pct(tp, tp + fn),
                     pct(tn, tn + fn), pct(tn, tn + fp)])
    lines += [markdown_table(["part", "machines filtered", "machines forwarded",
                              "people filtered", "people forwarded", "precision (filtered)",
                              "recall (filtered)", "precision (forwarded)",
                              "recall (forwarded)"], rows), ""]
    lines += ["## Which step decided", "",
              "Machine lists, by the verdict reason's kind (`ua`: a named rule; "
              "`crawlerdetect`; `no-client-token`: no browser or mail-client token; "
              "`no-match`: forwarded as a person, a miss).", ""]
    rows = []
    for ua_list in lists:
        if ua_list.expect == FILTERED:
            for part in PARTS:
                r = tallies[ua_list.name, part].reasons
                rows.append([ua_list.name, part, ", ".join(f"{k} {v}" for k, v in
                                                           r.most_common())])
    lines += [markdown_table(["list", "part", "reasons"], rows), ""]
    lines += ["## Mail entries in the crawler lists", "",
              "Counted apart, not as misses: the crawler lists call these bots, the issue "
              "requires them forwarded (a person opened the mail).", ""]
    for ua_list in lists:
        for part in PARTS:
            for ua, reason in tallies[ua_list.name, part].mail:
                lines.append(f"- {ua_list.name} ({part}): `{ua}` ({reason})")
    lines += ["", "## Misclassified", "",
              f"Every one in the held-out part; up to {args.examples} per list in the "
              "development part.", ""]
    for ua_list in lists:
        for part in PARTS:
            wrong = tallies[ua_list.name, part].wrong
            if not wrong:
                continue
            shown = wrong if part == "held-out" else wrong[:args.examples]
            lines.append(f"### {ua_list.name}, {part}: {len(wrong)}")
            lines.append("")
            lines += [f"- `{v}` `{r}`: `{ua[:200]}`" for ua, v, r in shown]
            if len(shown) < len(wrong):
                lines.append(f"- ... and {len(wrong) - len(shown)} more")
            lines.append("")
    checked, mismatches = http
    lines += ["## The same through the API", "",
              f"{checked} user agents (the first {args.http_sample} of each list's part, by "
              "sort order) posted to `POST /v1/events` as `userAgent` of a real app (Flask's "
              "test client, a fresh SQLite file) and read back with `GET /v1/events/<id>`: "
              f"**{len(mismatches)}** differ from the function's verdict, reason or status "
              "(`queued` / `filtered`).", ""]
    lines += [f"- {m}" for m in mismatches[:20]]
    lines += ["## Cost", "",
              f"Classifying every user agent once, cold caches: {timing[0]:,} user agents in "
              f"{timing[1]:.1f} s, {1e6 * timing[1] / timing[0]:.0f} us each on average "
              "(views from one user agent hit the classifier's cache afterwards).", "",
              "## Lists and machine", ""]
    lines += [f"- {ua_list.name}: {ua_list.origin}, {len(ua_list.entries)} distinct"
              for ua_list in lists]
    lines.append("- packages: " + ", ".join(f"{p} {metadata.version(p)}" for p in PACKAGES))
    lines += [f"- {k}: {v}" for k, v in machine_info(None) if "filesystem" not in k]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=ROOT,
                   help="the checkout whose service/ is measured (default: this one)")
    p.add_argument("--examples", type=int, default=25,
                   help="misclassified user agents shown per list, development part")
    p.add_argument("--http-sample", type=int, default=40,
                   help="user agents per list and part sent through POST /v1/events")
    p.add_argument("--output", type=Path, default=HERE / "results-verdicts.md")
    args = p.parse_args()
    sys.path.insert(0, str(args.root.resolve()))
    from service.ingest.verdicts import FORWARDED_BY_DEFAULT, Classifier

    lists = all_lists()
    classifier = Classifier.load()
    started = time.perf_counter()
    tallies = {(ua_list.name, part): judge(classifier, ua_list, part, FORWARDED_BY_DEFAULT)
               for ua_list in lists for part in PARTS}
    timing = (sum(len(ua_list.entries) for ua_list in lists), time.perf_counter() - started)
    confusion = {}
    for part in PARTS:
        tp = fn = fp = tn = 0
        for ua_list in lists:
            t = tallies[ua_list.name, part]
            if ua_list.expect == FILTERED:
                tp, fn = tp + t.filtered, fn + t.n - t.filtered
            else:
                fp, tn = fp + t.filtered, tn + t.n - t.filtered
        confusion[part] = (tp, fn, fp, tn)
    http = spot_check_http(lists, classifier, args.http_sample)
    text = report(args, lists, tallies, confusion, http, timing)
    from common import write_report

    write_report(text, args.output, marker=ANALYSIS)
    if http[1]:
        raise SystemExit("the API's verdicts differ from the function's")


if __name__ == "__main__":
    main()
