"""Gunicorn settings for the web process (reads the same environment as the app)."""

import os

from service.logging import logging_config

_env = os.environ.get

bind = f"{_env('HOST', '0.0.0.0')}:{_env('PORT', '8000')}"
workers = int(_env("WEB_CONCURRENCY", str(2 * (os.cpu_count() or 1))))
worker_class = "gthread"
threads = int(_env("GUNICORN_THREADS", "4"))
# Behind a load balancer: requests are short; keep-alive a little longer than an
# ALB's idle timeout is not needed for a relay, so a few seconds is enough.
timeout = int(_env("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(_env("GUNICORN_GRACEFUL_TIMEOUT", "25"))  # SIGTERM: finish in-flight
keepalive = 5
max_requests = int(_env("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = 100 if max_requests else 0
# TRUSTED_PROXIES > 0: the app's ProxyFix reads X-Forwarded-*; let gunicorn accept them too.
forwarded_allow_ips = "*" if int(_env("TRUSTED_PROXIES", "0")) > 0 else "127.0.0.1,::1"
# Gunicorn 24+ opens a control socket at one fixed path per user; several web
# processes on a host (or tests) would delete each other's. The relay needs none.
control_socket_disable = True
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'
_fmt = _env("LOG_FORMAT") or ("json" if _env("RELAY_ENV") == "production" else "text")
logconfig_dict = logging_config(_env("LOG_LEVEL", "INFO").upper(), _fmt)
logconfig_dict["loggers"].update({
    "gunicorn.error": {"level": _env("LOG_LEVEL", "INFO").upper(), "handlers": ["stdout"],
                       "propagate": False},
    "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
})
