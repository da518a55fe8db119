"""How an OAuth install's grant becomes stored tokens (the OAuth callback hands it to
``store_grant``), beside the token policy in ``credentials``. No Flask here."""

from __future__ import annotations

import datetime as dt

from ..clock import expiry
from ..highlevel.oauth import TokenGrant
from ..store.installs import COMPANY, LOCATION, record_oauth_install
from ..store.tokens import AGENCY, OAUTH, NewToken, TokenVault


class UnusableGrantError(ValueError):
    """HighLevel's answer to an install has no refresh token, or names no location."""


def store_grant(vault: TokenVault, grant: TokenGrant, *, now: dt.datetime) -> str:
    """Store an install's grant in one transaction; return what was installed, for people.

    A location install stores the location's OAuth pair. An agency install stores the
    agency's pair under its company id and records its approved locations (their tokens
    are minted when first needed). Views parked for want of a token are released where
    they can now be sent.

    :raises UnusableGrantError: nothing is stored.
    """
    if not (grant.refresh_token and (grant.location_id or grant.company_id)):
        raise UnusableGrantError("HighLevel's answer had no refresh token or no location")
    agency = grant.user_type == "Company" or not grant.location_id
    owner = grant.company_id if agency else grant.location_id
    if agency:
        released = list(grant.approved_locations)
        installed = [(COMPANY, owner)] + [(LOCATION, loc) for loc in released]
    else:
        released, installed = [owner], [(LOCATION, owner)]
    token = NewToken(owner, access_token=grant.access_token, refresh_token=grant.refresh_token,
                     expires_at=expiry(grant.expires_in, now=now), company_id=grant.company_id,
                     token_kind=AGENCY if agency else OAUTH)
    record_oauth_install(vault, token, installed=installed, company_id=grant.company_id,
                         release=released, now=now)
    if not agency:
        return f"location {owner}"
    return f"agency {owner}" + (f" ({len(released)} locations)" if released else "")
