"""Gunicorn settings for the web process, read from the service's settings inventory."""

import os
import shutil
import tempfile

from gunicorn import glogging

from service.config import load_server_config
from service.logging import logging_config, redact_path

# The settings' inventory and defaults live in service/config.py; this reads only the web
# server's part of it, so the master starts without the app's secrets (each worker checks
# them when it builds the app).
_settings = load_server_config(os.environ)

# HOST is loopback unless told otherwise: the web tier sits behind a buffering proxy
# (deploy/), and only the proxy should reach it. HOST=0.0.0.0 where the proxy is on another
# host (Heroku's router, a container's port mapping, a load balancer on the LAN).
bind = f"{_settings['HOST']}:{_settings['PORT']}"
workers = _settings["WEB_CONCURRENCY"]
worker_class = "gthread"
# Requests mostly wait on a commit (group commit shares it between threads), so
# threads are cheap capacity, and more of them make bigger groups: on 2 cores, 4x16 served
# ~25% more pixel views per second than 4x8 (bench/results-pixel.md). CPU-bound work is
# bounded by the workers.
threads = _settings["GUNICORN_THREADS"]
# Behind a load balancer: requests are short; keep-alive a little longer than an
# ALB's idle timeout is not needed for a relay, so a few seconds is enough.
timeout = _settings["GUNICORN_TIMEOUT"]
graceful_timeout = _settings["GUNICORN_GRACEFUL_TIMEOUT"]  # SIGTERM: finish in-flight
keepalive = 5
max_requests = _settings["GUNICORN_MAX_REQUESTS"]
max_requests_jitter = 100 if max_requests else 0
# TRUSTED_PROXIES > 0: the app's ProxyFix reads X-Forwarded-*; let gunicorn accept them too.
forwarded_allow_ips = "*" if _settings["TRUSTED_PROXIES"] > 0 else "127.0.0.1,::1"
# Gunicorn 24+ opens a control socket at one fixed path per user; several web
# processes on a host (or tests) would delete each other's. The relay needs none.
control_socket_disable = True
accesslog = "-"  # one structured record per request: see AccessLogger below
logconfig_dict = logging_config(_settings["LOG_LEVEL"], _settings["LOG_FORMAT"])
logconfig_dict["loggers"].update({
    "gunicorn.error": {"level": _settings["LOG_LEVEL"], "handlers": ["stdout"],
                       "propagate": False},
    "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
})


class AccessLogger(glogging.Logger):
    """Gunicorn's logger, with each access line a ``http.request`` record whose fields
    (method, path, status, duration, request id) the service's formatter writes as JSON.

    The path has no query string (an OAuth callback's carries the authorization code),
    and a pixel or beacon token in it is cut to its first characters (``redact_path``):
    the token is a credential, and access logs travel further than the store.
    """

    def access(self, resp, req, environ, request_time):
        if not self.cfg.accesslog:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        self.access_log.info("http.request", extra={
            "method": environ.get("REQUEST_METHOD"),
            "path": redact_path(environ.get("PATH_INFO", "")),
            "status": int(status), "duration_ms": round(request_time.total_seconds() * 1e3, 1),
            "bytes": getattr(resp, "sent", None), "remote_addr": environ.get("REMOTE_ADDR"),
            "user_agent": environ.get("HTTP_USER_AGENT"), "pid": os.getpid(),
            "request_id": next((v for k, v in resp.headers if k.lower() == "x-request-id"),
                               None),
        })


logger_class = AccessLogger

# Prometheus multiprocess mode (service/metrics.py): each worker writes its values to files
# in PROMETHEUS_MULTIPROC_DIR and GET /metrics merges them, whichever worker answers.
# prometheus_client reads the variable when first imported, so the master sets it before
# forking workers (which import the app after the fork: keep preload_app off).
_METRICS_DIR_PREFIX = "relay-metrics-"


def on_starting(server):
    """Give the workers a fresh metrics directory, unless the operator set one."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:  # the operator's, perhaps shared with a forwarder on this machine: kept as is
        os.makedirs(path, exist_ok=True)
    else:
        path = tempfile.mkdtemp(prefix=f"{_METRICS_DIR_PREFIX}{os.getpid()}-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    server.log.info("metrics.multiprocess_dir", extra={"path": path})


def child_exit(server, worker):
    """Drop a dead worker's live gauges (its counters stay: totals must not go down)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics directory this master made (a USR2 re-exec makes its own)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if os.path.basename(path).startswith(f"{_METRICS_DIR_PREFIX}{os.getpid()}-"):
        shutil.rmtree(path, ignore_errors=True)
