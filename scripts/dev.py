"""`make dev`: the relay against a local HighLevel stand-in, on loopback, ready to try.

1. Reads the environment (and `.env`, as the flask command does; FLASK_SKIP_DOTENV=1
   turns that off): PORT (8000) for the web, DEV_HL_PORT (9100) for the stand-in,
   DATABASE_URL (default `sqlite:///instance/dev.db`, so `make run`'s store is untouched).
   HIGHLEVEL_BASE_URL always points at the stand-in, and everything binds 127.0.0.1.
2. Migrates the store and makes sure `dev_location` has a token the stand-in accepts
   (stored once; a second `make dev` keeps it, or stores a new one if it stopped working).
3. Prints the console and docs URLs, the development keys, the ready location and two
   curl lines to paste: one posts a view, one reads where it stands.
4. Runs Procfile.dev under honcho: `web` (gunicorn, as in the Procfile), `worker` (the
   forwarder) and `highlevel` (the stand-in, tests/fake_highlevel.py, which checks each
   request against HighLevel's OpenAPI documents when ../shared/ has them and prints one
   line per request). Ctrl-C stops them all, and so does any one of them exiting.

`--prepare-only` does 1-3 and exits (the processes are then yours to start).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile.dev"
DEV_LOCATION = "dev_location"
DEV_DATABASE_URL = "sqlite:///instance/dev.db"
DEFAULT_PORT, DEFAULT_HL_PORT = 8000, 9100


def fail(message: str) -> int:
    print(f"dev: {message}", file=sys.stderr)
    return 1


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def dev_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The environment every process of the dev loop gets: ``env`` with the dev loop's
    defaults, and HighLevel replaced by the stand-in.

    :raises ValueError: PORT or DEV_HL_PORT is not a port number, or production is asked for.
    """
    if env.get("RELAY_ENV") == "production":
        raise ValueError("make dev is for development; unset RELAY_ENV=production")
    ports = {}
    for name, default in (("PORT", DEFAULT_PORT), ("DEV_HL_PORT", DEFAULT_HL_PORT)):
        raw = env.get(name) or str(default)
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise ValueError(f"{name} must be a port number, got {raw!r}")
        ports[name] = int(raw)
    if ports["PORT"] == ports["DEV_HL_PORT"]:
        raise ValueError("PORT and DEV_HL_PORT must differ")
    out = dict(env)
    out.update({"PORT": str(ports["PORT"]), "DEV_HL_PORT": str(ports["DEV_HL_PORT"]),
                "HOST": "127.0.0.1",  # loopback only
                "HIGHLEVEL_BASE_URL": f"http://127.0.0.1:{ports['DEV_HL_PORT']}"})
    for name, value in (("DATABASE_URL", DEV_DATABASE_URL), ("RELAY_ENV", "development"),
                        ("WEB_CONCURRENCY", "2"), ("PYTHONUNBUFFERED", "1"),
                        # honcho gives each process type its own PORT (web PORT, worker
                        # PORT+100, ...): name the web's for all of them.
                        ("PUBLIC_BASE_URL", f"http://localhost:{ports['PORT']}")):
        if not out.get(name):
            out[name] = value
    return out


def prepare(env: MutableMapping[str, str]) -> dict[str, str]:
    """Migrate the store and make sure DEV_LOCATION has an active token; return what the
    banner shows. Runs the app in this process on ``env`` (it becomes ``os.environ``)."""
    os.environ.clear()
    os.environ.update(env)
    if str(ROOT) not in sys.path:  # run as a script: sys.path[0] is scripts/
        sys.path.insert(0, str(ROOT))
    from sqlalchemy.engine import make_url

    from service import create_app
    from service.store.engine import upgrade
    from service.store.tokens import ACTIVE, TokenDecryptError
    from service.web.locations import save_token

    app = create_app()
    svc = app.extensions["service"]
    try:
        upgrade(svc.engine)
        with app.app_context():
            stored = svc.vault.read(DEV_LOCATION)
            try:  # a token stored under since-regenerated dev secrets decrypts no more
                usable = stored is not None and stored.status == ACTIVE \
                    and bool(stored.access_token())
            except TokenDecryptError:
                usable = False
            if usable:
                token = "kept its token"
            else:  # a Private Integration Token's shape; the stand-in takes any token
                save_token(DEV_LOCATION, {"accessToken": "pit-dev-" + secrets.token_hex(16)})
                token = "token stored"
    finally:
        svc.engine.dispose()
    cfg = app.config
    return {"ingest_key": cfg["INGEST_API_KEYS"][0], "admin_key": cfg["ADMIN_API_KEYS"][0],
            "store": make_url(cfg["DATABASE_URL"]).render_as_string(hide_password=True),
            "token": token}


def banner(env: Mapping[str, str], ready: Mapping[str, str]) -> str:
    """What `make dev` prints before the processes' own output."""
    base = f"http://localhost:{env['PORT']}"
    json_body = json.dumps({"locationId": DEV_LOCATION, "invoiceId": "INV-1001"})
    post = ('ID=$(curl -sS -X POST "$B/v1/events" -H "Authorization: Bearer $IK" '
            f"-H 'Content-Type: application/json' -d '{json_body}' "
            "| python3 -c 'import json, sys; print(json.load(sys.stdin)[\"id\"])'); echo $ID")
    status = 'curl -sS "$B/v1/events/$ID" -H "Authorization: Bearer $IK"; echo'
    keys = (f"export B={base} IK={shlex.quote(ready['ingest_key'])} "
            f"AK={shlex.quote(ready['admin_key'])}")
    return "\n".join([
        f"make dev: the relay on {base}, HighLevel's stand-in on {env['HIGHLEVEL_BASE_URL']}",
        f"  store      {ready['store']}",
        f"  console    {base}/console  (sign in with the admin key)",
        f"  API docs   {base}/docs",
        f"  location   {DEV_LOCATION} ({ready['token']}; the stand-in accepts it)",
        f"  keys       ingest {ready['ingest_key']}",
        f"             admin  {ready['admin_key']}",
        "",
        "Try it from another terminal: post a view, then read where it stands",
        "(queued, then delivered once the stand-in has its PATCH):",
        "",
        f"  {keys}",
        f"  {post}",
        f"  {status}",
        "",
        'The stand-in prints each request it gets ("highlevel.1 | PATCH ... -> 200").',
        "Ctrl-C stops everything.",
        "",
    ])


def main(argv: list[str] | None = None, env: Mapping[str, str] = os.environ) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--prepare-only"]):
        return fail("usage: scripts/dev.py [--prepare-only]")
    os.chdir(ROOT)  # instance/, .env and Procfile.dev are the project's
    merged = dict(env)
    if not merged.get("FLASK_SKIP_DOTENV"):
        from dotenv import dotenv_values  # Flask's CLI reads .env the same way

        for name, value in dotenv_values(ROOT / ".env").items():
            if value is not None and name not in merged:  # the environment wins
                merged[name] = value
    try:
        dev_env = dev_environment(merged)
    except ValueError as exc:
        return fail(str(exc))
    busy = [f"{name} {dev_env[name]}" for name in ("PORT", "DEV_HL_PORT")
            if port_in_use(int(dev_env[name]))]
    if busy and args != ["--prepare-only"]:
        return fail(f"in use on 127.0.0.1: {', '.join(busy)}; set PORT / DEV_HL_PORT")
    # This venv's python, flask, gunicorn and honcho first, even outside `make dev`.
    dev_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent),
                                       dev_env.get("PATH", "")])
    print(banner(dev_env, prepare(dev_env)), flush=True)
    if args == ["--prepare-only"]:
        return 0
    # .env is already in the environment (above): honcho reads no other.
    os.execvpe("honcho", ["honcho", "--app-root", str(ROOT), "--env", os.devnull,
                          "--procfile", str(PROCFILE), "start", "--port", dev_env["PORT"]],
               dev_env)
    return 1  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
