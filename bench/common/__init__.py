"""Shared plumbing for the benchmarks, by part: service processes (``processes``), the
stores a run uses (``stores``), the one run loop and its report (``runs``), machine facts
and tables (``report``), the fake HighLevel in a process (``fakehl``), paced load
(``load``) and the relay's side of a run (``relay``).

The processes are the end-to-end tests' (``tests/processes.py``): the same commands, the
same clean environment, logs in files (here under ``bench/out/``), always reaped.
Nothing here talks to anything but 127.0.0.1. Every wait is bounded.
"""

from __future__ import annotations

from .fakehl import FakeHighLevelProcess
from .load import PacedLoad, per_second
from .processes import (
    OUT,
    PROBLEMS,
    ROOT,
    SERVICE_APP,
    Process,
    bench_secrets,
    check_names,
    child_pids,
    flask,
    free_port,
    log_text,
    process_tree_cpu,
    rss_kib,
    run_checked,
    service_env,
    start,
    store_options,
    tree_cpu,
    wait_for,
    web_server,
)
from .relay import (
    event_counts,
    preload_backlog,
    relay_processes,
    wait_delivered,
    wait_documents_delivered,
)
from .report import (
    command_line,
    facts_block,
    facts_for,
    machine_section,
    markdown_table,
    percentile,
    pyplot,
    relative_to,
    report_head,
)
from .runs import run_matrix, usable_backends, write_report
from .stores import fresh_store

__all__ = [  # what the bench scripts import
    "FakeHighLevelProcess", "OUT", "PROBLEMS", "PacedLoad", "Process", "ROOT", "SERVICE_APP",
    "bench_secrets", "check_names", "child_pids", "command_line", "event_counts",
    "facts_block", "facts_for", "flask", "free_port", "fresh_store", "log_text",
    "machine_section", "markdown_table", "per_second", "percentile", "preload_backlog",
    "process_tree_cpu", "pyplot", "relative_to", "relay_processes", "report_head", "rss_kib",
    "run_checked", "run_matrix", "service_env", "start", "store_options", "tree_cpu",
    "usable_backends", "wait_delivered", "wait_documents_delivered", "wait_for", "web_server",
    "write_report",
]
