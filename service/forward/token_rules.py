"""What a token offered from outside (the API, the console, ``flask tokens set``) must meet
before it is stored: the rules that save it from being accepted only to fail later. Part of
the token policy (credentials.py decides how stored tokens are used). No Flask here."""

from __future__ import annotations


class UnrefreshableTokenError(ValueError):
    """A refresh token offered to a relay with no OAuth app to spend it: nothing is stored."""


def check_refreshable(refresh_token: str | None, *, client_id: str | None,
                      client_secret: str | None) -> None:
    """Refuse a refresh token this relay could never use. Without the app's client id and
    secret no refresh happens, so the OAuth access token stored with it would die within a
    day and park the location's views (the API, ``tokens set`` and the console ask here).

    :raises UnrefreshableTokenError: its message names the missing settings.
    """
    missing = [name for name, value in (("HIGHLEVEL_CLIENT_ID", client_id),
                                        ("HIGHLEVEL_CLIENT_SECRET", client_secret)) if not value]
    if refresh_token and missing:
        raise UnrefreshableTokenError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: this "
            "relay cannot refresh OAuth tokens; set HIGHLEVEL_CLIENT_ID and "
            "HIGHLEVEL_CLIENT_SECRET, or store a private integration token without "
            "refreshToken")
