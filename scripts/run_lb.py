"""`make run-lb`: the production topology on one machine.

HAProxy (deploy/haproxy.cfg.j2) on HOST:PORT (127.0.0.1:8000) in front of WEB_INSTANCES (2)
gunicorn instances, each on 127.0.0.1:PORT+i with TRUSTED_PROXIES=1, plus one forwarder,
all on DATABASE_URL (SQLite by default). Migrates the store first and, in development,
prints the keys; then runs everything under honcho, as `make run` does: output prefixed
by process, Ctrl-C stops them all, and so does any one of them exiting.

The rendered config and Procfile are in instance/run-lb-PORT/. Installs nothing: without
HAProxy it says which Debian package to install and exits 1.
HAPROXY names the binary when it is not on PATH or in /usr/sbin.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import jinja2

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "haproxy.cfg.j2"
INSTALL_HINT = "install Debian's package: sudo apt-get install haproxy"


def find_haproxy(env: Mapping[str, str]) -> str | None:
    """The haproxy binary: $HAPROXY if set, else on PATH or in /usr/sbin (often not on a
    user's PATH on Debian); None when there is none."""
    if env.get("HAPROXY"):
        path = env["HAPROXY"]
        return path if os.access(path, os.X_OK) else None
    return shutil.which("haproxy", path=os.pathsep.join([env.get("PATH", ""), "/usr/sbin",
                                                         "/sbin"]))


def render_config(*, bind: str, servers: Sequence[tuple[str, str]]) -> str:
    """HAProxy's configuration: clients on ``bind``, ``(name, "host:port")`` servers."""
    template = jinja2.Template(TEMPLATE.read_text(), undefined=jinja2.StrictUndefined,
                               keep_trailing_newline=True)
    return template.render(bind=bind, servers=list(servers))


def instance_ports(port: int, count: int) -> list[int]:
    """The gunicorn instances' ports: the ones right after the proxy's."""
    return [port + i for i in range(1, count + 1)]


def procfile(*, haproxy: str, config: Path, ports: Sequence[int]) -> str:
    """honcho's Procfile: the proxy, one web process per port, one forwarder."""
    web = 'gunicorn --config config/gunicorn.conf.py "service:create_app()"'
    lines = [f"proxy: exec {shlex.quote(haproxy)} -db -f {shlex.quote(str(config))}"]
    # The proxy sets X-Forwarded-For (and replaces a client's): trust one hop, unless the
    # operator says more (a CDN in front of this proxy).
    lines += [f"web{i}: HOST=127.0.0.1 PORT={port} TRUSTED_PROXIES=${{TRUSTED_PROXIES:-1}} "
              f"exec {web}" for i, port in enumerate(ports, 1)]
    lines.append("worker: exec flask --app service forwarder")
    return "\n".join(lines) + "\n"


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def fail(message: str) -> int:
    print(f"run-lb: {message}", file=sys.stderr)
    return 1


def main(env: Mapping[str, str] = os.environ) -> int:
    haproxy = find_haproxy(env)
    if haproxy is None:
        where = f"HAPROXY={env['HAPROXY']} is not executable" if env.get("HAPROXY") else \
            "haproxy not found (on PATH or in /usr/sbin)"
        return fail(f"{where}; {INSTALL_HINT}")
    try:
        host, port = env.get("HOST") or "127.0.0.1", int(env.get("PORT") or 8000)
        count = int(env.get("WEB_INSTANCES") or 2)
    except ValueError as exc:
        return fail(f"PORT and WEB_INSTANCES must be numbers ({exc})")
    if count < 1:
        return fail("WEB_INSTANCES must be at least 1")
    ports = instance_ports(port, count)
    busy = [p for p in ports if port_in_use("127.0.0.1", p)]
    if port_in_use(host, port) or busy:
        return fail(f"port(s) {', '.join(map(str, [port, *ports]))} must be free "
                    f"(in use: {', '.join(map(str, busy)) or port}); set PORT")

    run_dir = ROOT / "instance" / f"run-lb-{port}"  # the rendered config and Procfile
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "haproxy.cfg"
    config.write_text(render_config(
        bind=f"{host}:{port}", servers=[(f"web{i}", f"127.0.0.1:{p}")
                                        for i, p in enumerate(ports, 1)]))
    checked = subprocess.run([haproxy, "-c", "-q", "-f", str(config)], capture_output=True,
                             text=True)
    if checked.returncode != 0:
        return fail(f"{haproxy} rejects {config}:\n{checked.stdout}{checked.stderr}")
    (run_dir / "Procfile").write_text(procfile(haproxy=haproxy, config=config, ports=ports))

    # This venv's flask, gunicorn and honcho first, even outside `make run-lb`.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    os.chdir(ROOT)
    commands = [["db", "upgrade"]]
    if env.get("RELAY_ENV", "development") == "development":  # keys it generated: show them
        commands.append(["keys", "show"])
    for args in commands:  # as `make run` does
        if subprocess.run(["flask", "--app", "service", *args]).returncode != 0:
            return fail(f"flask {' '.join(args)} failed")
    print(f"run-lb: HAProxy on http://{host}:{port} -> "
          + ", ".join(f"web{i} 127.0.0.1:{p}" for i, p in enumerate(ports, 1))
          + f"; config {config.relative_to(ROOT)}", flush=True)
    # honcho reads .env into every process, as under `make run`; FLASK_SKIP_DOTENV (which
    # the flask commands above honour) turns that off here too.
    dotenv = os.devnull if env.get("FLASK_SKIP_DOTENV") else ".env"
    os.execvp("honcho", ["honcho", "--app-root", str(ROOT), "--env", dotenv, "--procfile",
                         str(run_dir / "Procfile"), "start"])


if __name__ == "__main__":
    sys.exit(main())
