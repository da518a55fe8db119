"""CPU per send of the HighLevel client's HTTP work: libcurl against urllib3, side by side.

Usage: ``python bench/client_cpu.py [--sends 3000] [--rounds 5]``

One thread sends PATCH /invoices/stats/last-visited-at to the fake HighLevel (its own
process, answering at once, keep-alive), one send after another, and reads this process's
CPU time (``time.process_time``) over the sends:

- ``libcurl``: the service's ``HighLevelClient.mark_viewed`` over ``build_pool``
  (``service/highlevel/transport.py``);
- ``urllib3``: the same request as the client made it before 47d0c4f, on a urllib3
  connection pool (``urlopen`` with the same headers, no retries, no redirects), and the
  same reading of the answer's ``X-RateLimit-*`` headers.

Rounds interleave the two (order reversed on even rounds); the table gives each round and
the median. The fake's own CPU is not counted (another process).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import urllib3  # noqa: E402
from common import (  # noqa: E402 - after the path set-up, so `python bench/client_cpu.py` works
    FakeHighLevelProcess,
    facts_for,
    machine_section,
    markdown_table,
    report_head,
    store_options,
    write_report,
)

from service.highlevel.client import (  # noqa: E402
    USER_AGENT,
    HighLevelClient,
    build_pool,
    parse_rate_limit,
)

PATH = "/invoices/stats/last-visited-at"
TOKEN = "pit-bench-0000-aaaa-1111"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sends", type=int, default=3000, help="sends per round and client")
    p.add_argument("--rounds", type=int, default=5)
    store_options(p, "results-client-cpu.md")
    return p.parse_args(argv)


def libcurl_sender(url: str):
    client = HighLevelClient(build_pool(1, url), url)

    def send(n: int) -> int:
        return client.mark_viewed(kind="invoice", document_id=f"inv_{n}", token=TOKEN).status

    return send


def urllib3_sender(url: str):
    """The client's send before 47d0c4f: urlopen on the host's pool, the answer's headers
    read as the client read them."""
    pool = urllib3.PoolManager(num_pools=4, maxsize=1, block=True).connection_from_url(url)
    timeout = urllib3.Timeout(connect=5.0, read=10.0)
    no_retry = urllib3.Retry(False, redirect=False)
    headers = {"Version": "2021-07-28", "Authorization": f"Bearer {TOKEN}",
               "Accept": "application/json", "Content-Type": "application/json",
               "User-Agent": USER_AGENT}

    def send(n: int) -> int:
        resp = pool.urlopen("PATCH", PATH, body=json.dumps({"invoiceId": f"inv_{n}"}).encode(),
                            headers=headers, timeout=timeout, retries=no_retry,
                            redirect=False)
        parse_rate_limit(resp.headers)
        resp.headers.get("Retry-After")
        return resp.status

    return send


def cpu_per_send(send, sends: int) -> float:
    """Milliseconds of this process's CPU per send, over ``sends`` sends."""
    started = time.process_time()
    for n in range(sends):
        if send(n) != 200:
            raise RuntimeError(f"send {n} was not answered 200")
    return (time.process_time() - started) / sends * 1000


def main(argv=None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    facts = facts_for("sqlite", args.pg_url)
    hl = FakeHighLevelProcess(latency=0, rate_limit=False, rate_limit_max=1_000_000).start()
    try:
        senders = {"libcurl": libcurl_sender(hl.url), "urllib3": urllib3_sender(hl.url)}
        for send in senders.values():  # connections open, code warm
            cpu_per_send(send, 100)
        per: dict[str, list[float]] = {name: [] for name in senders}
        for n in range(args.rounds):
            order = list(senders) if n % 2 == 0 else list(senders)[::-1]
            for name in order:
                per[name].append(cpu_per_send(senders[name], args.sends))
                print(f"round {n + 1} {name}: {per[name][-1]:.3f} ms", flush=True)
    finally:
        hl.stop()
    base = statistics.median(per["urllib3"])
    rows = [[name, f"{statistics.median(values):.3f}",
             ", ".join(f"{v:.3f}" for v in values),
             f"{statistics.median(values) / base:.2f}x"] for name, values in per.items()]
    lines = report_head("HighLevel client: CPU per send (`bench/client_cpu.py`)",
                        started=started, short=args.sends < 1000)
    lines += [markdown_table(["transport", "CPU ms per send (median)", "rounds",
                              "vs urllib3"], rows), "",
              f"- {args.sends} sends per round and transport, one after another in one "
              "thread, to the fake HighLevel answering at once (its own process, "
              "keep-alive); CPU: this process's.",
              f"- {args.rounds} rounds, transports interleaved (order reversed on even "
              "rounds).", ""]
    lines += machine_section(facts, [])
    write_report("\n".join(lines), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
