"""`make dev` (scripts/dev.py with Procfile.dev): started as `make dev` starts it, on free
ports and a temporary store, the curl lines it prints followed to a PATCH at the HighLevel
stand-in, then stopped with Ctrl-C, leaving no process behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
import requests
import sqlalchemy as sa

from service.store.db import locations

from .processes import (
    ADMIN_KEY,
    INGEST_KEY,
    ROOT,
    Processes,
    base_env,
    free_port,
    load_script,
    wait_for,
)

dev = load_script("dev")


def dev_env(db_url: str, port: int, hl_port: int) -> dict[str, str]:
    """What `make dev` runs with, on this test's ports and store (DATABASE_URL overrides
    instance/dev.db): the development defaults (no RELAY_ENV, no PUBLIC_BASE_URL), with
    the keys given so nothing is generated into the project's instance/."""
    env = base_env(db_url, "http://127.0.0.1:9", port)
    for name in ("RELAY_ENV", "PUBLIC_BASE_URL", "HOST"):
        del env[name]
    env.update({"DEV_HL_PORT": str(hl_port), "WEB_CONCURRENCY": "1", "LOG_FORMAT": "text"})
    return env


def two_ports() -> tuple[int, int]:
    port = free_port()
    while (hl_port := free_port()) == port:
        pass
    return port, hl_port


def bash(script: str, env: dict[str, str]) -> str:
    """Run lines as a person pastes them into a shell; their output, or fail with it."""
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{script}\n-> {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_make_dev_delivers_the_printed_curl_to_the_stand_in_and_stops_on_ctrl_c(
        tmp_path, db_url):
    port, hl_port = two_ports()
    env = dev_env(db_url, port, hl_port)
    procs = Processes(tmp_path, env)
    script = procs.start("make-dev", [sys.executable, "scripts/dev.py"])
    children: dict[str, int] = {}
    base = f"http://localhost:{port}"
    try:
        def up() -> bool:
            assert script.running(), f"dev.py exited {script.returncode}:\n{script.tail()}"
            children.update((name, int(pid)) for name, pid in
                            re.findall(r"(\w+)\.1 started \(pid=(\d+)\)", script.stdout()))
            try:
                with requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
                    ready = resp.status_code == 200
            except (requests.ConnectionError, requests.Timeout):
                return False  # not listening yet, or its worker still importing the app
            return ready and "fake HighLevel listening on" in script.stdout()

        wait_for(up, timeout=60, what="make dev's web and stand-in")
        assert set(children) == {"web", "worker", "highlevel"}, children
        out = script.stdout()
        # What it prints: the console, the docs, the keys, the ready location.
        for shown in (f"console    {base}/console", f"API docs   {base}/docs",
                      f"ingest {INGEST_KEY}", f"admin  {ADMIN_KEY}", "location   dev_location",
                      f"HighLevel's stand-in on http://127.0.0.1:{hl_port}"):
            assert shown in out, out
        for path in ("/docs", "/console"):
            with requests.get(base + path, timeout=10) as resp:
                assert resp.status_code == 200, (path, resp.status_code)

        # Follow the printed lines exactly: post a view, then read its status.
        export, post, status = (re.search(rf"^  ({start}.*)$", out, re.M).group(1)
                                for start in (r"export B=", r"ID=\$\(curl", r"curl -sS \"\$B"))
        event_id = bash(f"{export}\n{post}", env).split()[-1]
        assert re.fullmatch(r"[0-9a-f-]{36}", event_id), event_id

        def delivered() -> dict | None:
            answer = json.loads(bash(f"{export}\nID={event_id}\n{status}", env))
            assert answer["status"] in ("queued", "delivered"), answer
            return answer if answer["status"] == "delivered" else None

        answer = wait_for(delivered, timeout=30, interval=0.3, what="the view delivered")
        assert (answer["locationId"], answer["documentId"]) == ("dev_location", "INV-1001")
        # The stand-in (not HighLevel) got the PATCH, and said so in make dev's output.
        wait_for(lambda: re.search(r"^\S+ highlevel\.1 +\| PATCH /invoices/stats/"
                                   r"last-visited-at -> 200 invoice INV-1001 ",
                                   script.stdout(), re.M),
                 timeout=10, what="the stand-in's line for the PATCH")
        # Minted pixel URLs point at PORT (PUBLIC_BASE_URL unset in development).
        with requests.post(base + "/v1/pixel-urls", timeout=10,
                           json={"locationId": "dev_location", "invoiceId": "INV-1002"},
                           headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as resp:
            assert resp.status_code == 200 and resp.json()["url"].startswith(
                f"{base}/v1/pixel/"), resp.text

        os.killpg(script.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the foreground group
        script.wait(30)
        for name, pid in children.items():
            wait_for(lambda p=pid: not group_alive(p), timeout=10, what=f"{name} to exit")
        assert not listening(port) and not listening(hl_port)
        assert re.search(r"web\.1 stopped", script.stdout())
    finally:
        for pid in children.values():  # in sessions of their own: beyond procs.cleanup
            if group_alive(pid):
                os.killpg(pid, signal.SIGKILL)
        procs.cleanup()


def test_a_second_make_dev_keeps_the_ready_location(db_url):
    env = dev_env(db_url, *two_ports())
    prepare = [sys.executable, "scripts/dev.py", "--prepare-only"]
    outputs = [subprocess.run(prepare, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60) for _ in range(2)]
    for done in outputs:
        assert done.returncode == 0, done.stderr
    assert "dev_location (token stored;" in outputs[0].stdout
    assert "dev_location (kept its token;" in outputs[1].stdout
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(locations.c.location_id, locations.c.generation,
                                          locations.c.status)).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [("dev_location", 1, "active")]


def test_make_dev_refuses_a_busy_port_before_touching_the_store(tmp_path):
    port, hl_port = two_ports()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", hl_port))
        busy.listen()
        done = subprocess.run([sys.executable, "scripts/dev.py"], cwd=ROOT,
                              env=dev_env(f"sqlite:///{tmp_path}/dev.db", port, hl_port),
                              capture_output=True,
                              text=True, timeout=60)
    assert done.returncode == 1
    assert f"in use on 127.0.0.1: DEV_HL_PORT {hl_port}; set PORT / DEV_HL_PORT" in done.stderr
    assert not (tmp_path / "dev.db").exists()


@pytest.mark.parametrize(("env", "message"), [
    ({"RELAY_ENV": "production"}, "make dev is for development"),
    ({"PORT": "80a"}, "PORT must be a port number"),
    ({"DEV_HL_PORT": "70000"}, "DEV_HL_PORT must be a port number"),
    ({"PORT": "9100"}, "PORT and DEV_HL_PORT must differ"),
])
def test_make_dev_refuses_settings_it_cannot_run_with(env, message):
    with pytest.raises(ValueError, match=message):
        dev.dev_environment(env)


def test_make_dev_points_highlevel_at_the_stand_in_and_keeps_what_is_set():
    env = dev.dev_environment({"HIGHLEVEL_BASE_URL": "https://services.leadconnectorhq.com",
                               "HOST": "0.0.0.0", "DATABASE_URL": "postgresql://db/relay",
                               "DEV_HL_PORT": "9200"})
    assert env["HIGHLEVEL_BASE_URL"] == "http://127.0.0.1:9200"
    assert env["HOST"] == "127.0.0.1"
    assert env["DATABASE_URL"] == "postgresql://db/relay"
    assert (env["PORT"], env["PUBLIC_BASE_URL"]) == ("8000", "http://localhost:8000")
    assert dev.dev_environment({})["DATABASE_URL"] == "sqlite:///instance/dev.db"


def test_make_dev_replaces_a_token_its_keys_no_longer_decrypt(tmp_path):
    """New development secrets (instance/ deleted) leave the old token unreadable: the
    next `make dev` stores a fresh one rather than start a location that cannot send."""
    from cryptography.fernet import Fernet

    env = dev_env(f"sqlite:///{tmp_path}/dev.db", *two_ports())
    prepare = [sys.executable, "scripts/dev.py", "--prepare-only"]
    first = subprocess.run(prepare, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=60)
    assert first.returncode == 0, first.stderr
    env["TOKEN_ENCRYPTION_KEYS"] = Fernet.generate_key().decode()
    again = subprocess.run(prepare, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 0, again.stderr
    assert "dev_location (token stored;" in again.stdout
    engine = sa.create_engine(f"sqlite:///{tmp_path}/dev.db")
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.select(locations.c.generation, locations.c.status)).one()
    finally:
        engine.dispose()
    assert tuple(row) == (2, "active")
