"""The keys HighLevel signs its app webhooks with: the app's Ed25519 key (the operator's
``HIGHLEVEL_WEBHOOK_PUBLIC_KEY``) and the legacy RSA key HighLevel publishes for every app.

https://marketplace.gohighlevel.com/docs/webhook/WebhookIntegrationGuide
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..config import ConfigError

SETTING = "HIGHLEVEL_WEBHOOK_PUBLIC_KEY"

# The legacy RSA key, as published in HighLevel's Webhook Integration Guide ("GHL Public
# Key") and its Webhook Authentication Guide; the same for every app.
HIGHLEVEL_RSA_PUBLIC_KEY = b"""-----BEGIN PUBLIC KEY-----
MIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEAokvo/r9tVgcfZ5DysOSC
Frm602qYV0MaAiNnX9O8KxMbiyRKWeL9JpCpVpt4XHIcBOK4u3cLSqJGOLaPuXw6
dO0t6Q/ZVdAV5Phz+ZtzPL16iCGeK9po6D6JHBpbi989mmzMryUnQJezlYJ3DVfB
csedpinheNnyYeFXolrJvcsjDtfAeRx5ByHQmTnSdFUzuAnC9/GepgLT9SM4nCpv
uxmZMxrJt5Rw+VUaQ9B8JSvbMPpez4peKaJPZHBbU3OdeCVx5klVXXZQGNHOs8gF
3kvoV5rTnXV0IknLBXlcKKAQLZcY/Q9rG6Ifi9c+5vqlvHPCUJFT5XUGG5RKgOKU
J062fRtN+rLYZUV+BjafxQauvC8wSWeYja63VSUruvmNj8xkx2zE/Juc+yjLjTXp
IocmaiFeAO6fUtNjDeFVkhf5LNb59vECyrHD2SQIrhgXpO4Q3dVNA5rw576PwTzN
h/AMfHKIjE4xQA1SZuYJmNnmVZLIZBlQAF9Ntd03rfadZ+yDiOXCCs9FkHibELhC
HULgCsnuDJHcrGNd5/Ddm5hxGQ0ASitgHeMZ0kcIOwKDOzOU53lDza6/Y09T7sYJ
PQe7z0cvj7aE4B+Ax1ZoZGPzpJlZtGXCsu9aTEGEnKzmsFqwcSsnw3JB31IGKAyk
T1hhTiaCeIY/OwwwNUY2yvcCAwEAAQ==
-----END PUBLIC KEY-----
"""


def load_public_key(value: str) -> Ed25519PublicKey:
    """Parse ``HIGHLEVEL_WEBHOOK_PUBLIC_KEY``: PEM (as HighLevel shows it) or base64 of 32 bytes.

    :raises ConfigError: naming the setting, when it is neither.
    """
    text = value.strip().replace("\\n", "\n")  # a PEM pasted into .env on one line
    if "-----BEGIN" in text:
        try:
            key = serialization.load_pem_public_key(text.encode())
        except (ValueError, UnsupportedAlgorithm):
            raise ConfigError(f"{SETTING}: not a readable PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{SETTING}: must be an Ed25519 key, not {type(key).__name__}")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{SETTING}: expected a PEM public key or the base64 of the "
                          "32-byte Ed25519 key")
    return Ed25519PublicKey.from_public_bytes(raw)


def published_rsa_key() -> rsa.RSAPublicKey:
    """HighLevel's published RSA key, for the legacy ``x-wh-signature``."""
    key = serialization.load_pem_public_key(HIGHLEVEL_RSA_PUBLIC_KEY)
    assert isinstance(key, rsa.RSAPublicKey)
    return key
