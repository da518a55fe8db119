"""Reporting: machine facts, Markdown tables, percentiles, a report's head, plots."""

from __future__ import annotations

import math
import os
import platform
import re
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

from .processes import ROOT
from .stores import _sa_url, postgres_reachable

# -- reporting ------------------------------------------------------------------------

def machine_info(pg_url: str | None) -> list[tuple[str, str]]:
    """Facts that make a number comparable: CPU, RAM, versions, disk under bench/out."""
    cpu = "unknown"
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = match[1].strip() if match else cpu
    except OSError:
        pass
    ram = "unknown"
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1])
        ram = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, TypeError):
        pass
    facts = [
        ("CPUs (nproc)", str(os.cpu_count())),
        ("CPU model", cpu),
        ("RAM", ram),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("SQLite (Python's sqlite3)", sqlite3.sqlite_version),
    ]
    if pg_url:
        try:
            import sqlalchemy as sa

            engine = sa.create_engine(_sa_url(pg_url), connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                facts.append(("PostgreSQL", conn.exec_driver_sql("SHOW server_version").scalar()))
                for name in ("synchronous_commit", "fsync", "shared_buffers"):
                    facts.append((f"PostgreSQL {name}",
                                  conn.exec_driver_sql(f"SHOW {name}").scalar()))
            engine.dispose()
        except Exception as exc:  # noqa: BLE001
            facts.append(("PostgreSQL", f"unreachable ({type(exc).__name__})"))
    try:
        from importlib.metadata import version

        facts.append(("gunicorn / Flask / SQLAlchemy / psycopg",
                      " / ".join(version(p) for p in ("gunicorn", "flask", "sqlalchemy",
                                                     "psycopg"))))
    except Exception:  # noqa: BLE001
        pass
    try:
        fs = subprocess.run(["df", "-T", str(ROOT)], capture_output=True, text=True,
                            timeout=5).stdout.splitlines()[-1].split()[1]
        facts.append(("filesystem of bench/out (SQLite files)", fs))
    except (OSError, IndexError, subprocess.SubprocessError):
        pass
    try:
        load = os.getloadavg()
        busy = load[0] > 0.5 * (os.cpu_count() or 1)
        facts.append(("load average at start", " ".join(f"{x:.2f}" for x in load)
                      + (" (BUSY: other work was running; these numbers are not "
                         "representative)" if busy else "")))
    except OSError:
        pass
    return facts


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def facts_block(facts: list[tuple[str, str]]) -> str:
    return "\n".join(f"- {name}: {value}" for name, value in facts)


def machine_section(facts: list[tuple[str, str]], notes: list[str]) -> list[str]:
    """A report's closing lines: the machine, then the notes (if any)."""
    lines = ["## Machine", "", facts_block(facts)]
    return lines + (["", "## Notes", ""] + [f"- {n}" for n in notes] if notes else [])


def facts_for(backend: str, pg_url: str) -> list[tuple[str, str]]:
    """``machine_info`` for a run on one store, printed; exit if that store is PostgreSQL
    and it does not answer."""
    if backend == "postgresql" and (why := postgres_reachable(pg_url)):
        raise SystemExit(f"PostgreSQL not reachable at {pg_url}: {why}")
    facts = machine_info(pg_url if backend == "postgresql" else None)
    print("\n".join(f"{k}: {v}" for k, v in facts), flush=True)
    return facts


def command_line() -> str:
    """The command that produced this run, as typed from the project root."""
    script = Path(sys.argv[0]).resolve()
    shown = str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else sys.argv[0]
    return shlex.join([".venv/bin/python", shown, *sys.argv[1:]])


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values), max(1, math.ceil(pct / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def report_head(title: str, *, started, short: bool) -> list[str]:
    """A report's first lines: its title, a banner if the run was shorter than the
    documented full length, when it ran and the exact command."""
    banner = ["**SHORT VALIDATION RUN: durations below the defaults; these numbers show "
              "that the script works, not what the service can do.**", ""] if short else []
    return [f"# {title}", "", *banner, f"Run {started:%Y-%m-%d %H:%M} UTC with:", "",
            f"    {command_line()}", ""]


def relative_to(path: Path, report: Path) -> Path:
    """``path`` as a link from the report ``report`` (relative when beside or below it)."""
    try:
        return path.relative_to(report.parent)
    except ValueError:
        return path


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
