"""The one run loop, the stores a run uses (a SQLite file or a PostgreSQL schema) and
writing a report."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .report import machine_info
from .stores import postgres_reachable

# -- the run loop -------------------------------------------------------------------------

def run_matrix(outer: Iterable, run: Callable, *, notes: list[str],
               inner: Sequence = (None,), rounds: int = 1,
               where: Callable = lambda o, i, rnd: f"{o} {i}",
               describe: Callable | None = None, check: Callable | None = None,
               keep_going: bool = True) -> list[dict]:
    """Every case, side by side, in turn: for each round, for each ``outer`` value (a
    gunicorn setting, a store...), ``run(o, i, round)`` for each ``inner`` value (the
    servers, the concurrencies...; by default just None), in reverse order on even rounds
    so that none always goes first. ``run`` returns a result row (a dict) or yields
    several (one server, many loads). Each row gets its ``round``, is printed as
    ``describe(row)`` and adds ``check(row)``'s lines to ``notes``. A case that raises is
    a note, ``<where>: FAILED: <error>``, and the run goes on; with ``keep_going=False``
    the error ends the run."""
    outer = list(outer)
    rows: list[dict] = []
    for rnd in range(1, rounds + 1):
        for o in outer:
            for i in (inner if rnd % 2 else list(reversed(inner))):
                try:
                    made = run(o, i, rnd)
                    for r in ([made] if isinstance(made, dict) else made):
                        r["round"] = rnd
                        rows.append(r)
                        if describe is not None:
                            print(describe(r), flush=True)
                        if check is not None:
                            notes.extend(check(r))
                except Exception as exc:
                    if not keep_going:
                        raise
                    notes.append(f"{where(o, i, rnd)}: FAILED: {exc}")
                    print(f"  FAILED: {exc}", flush=True)
    return rows


def usable_backends(backends: list[str], pg_url: str, notes: list[str], *,
                    need_pg: bool = True) -> tuple[list[str], list[tuple[str, str]]]:
    """``backends`` less PostgreSQL (with a note) when it does not answer at ``pg_url``,
    and the machine's facts (``machine_info``, with PostgreSQL's if it is used)."""
    backends = list(backends)
    if need_pg and "postgresql" in backends and (why := postgres_reachable(pg_url)):
        notes.append(f"postgresql skipped: {why}")
        print(f"PostgreSQL not reachable at {pg_url}: {why}; skipping it", flush=True)
        backends.remove("postgresql")
    return backends, machine_info(pg_url if "postgresql" in backends else None)


def write_report(text: str, output: Path, *, marker: str | None = None,
                 also: str = "") -> None:
    """Print the report and write it to ``output``; the hand-written analysis in the old
    file, from ``marker`` on, is kept below the new numbers."""
    print()
    print(text)
    if marker and output.exists() and marker in (old := output.read_text()):
        text += "\n" + old[old.index(marker):]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"written to {output}{also}")
