"""Bearer tokens for the subscription service.

A token reads ``hst_<id>_<secret>``: the id finds its record, the secret is checked against a
SHA-256 digest salted per token. Only the salt and digest are stored, never the token, so a copy
of the store grants nothing. The secret has 256 random bits, so a fast hash suffices (no
password stretching needed); the digests are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from heliostat.errors import HeliostatError
from heliostat.subscriptions.model import validate_name
from heliostat.subscriptions.store import SubscriptionStore, TokenRecord

_PREFIX = "hst"


class PermissionDenied(HeliostatError):
    """The caller is known but may not do this (an operator-only call, or another owner's
    collection)."""


@dataclass(frozen=True, slots=True)
class Principal:
    owner: str
    operator: bool = False

    def require_operator(self, what: str) -> None:
        if not self.operator:
            raise PermissionDenied(f"only the operator may {what}")


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


def create_token(store: SubscriptionStore, owner: str, *, operator: bool = False) -> str:
    """Issue a token for owner; the only time the token itself is seen."""
    validate_name(owner, "owner")
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    store.add_token(
        TokenRecord(token_id, salt, _digest(salt, secret), owner, operator, time.time_ns() // 1000)
    )
    return f"{_PREFIX}_{token_id}_{secret}"


def token_id(token: str) -> str | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != _PREFIX:
        return None
    return parts[1]


def authenticate(store: SubscriptionStore, token: str) -> Principal | None:
    """The principal a token stands for; None when it is malformed, unknown or revoked."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != _PREFIX:
        return None
    record = store.token(parts[1])
    if record is None or not hmac.compare_digest(record.digest, _digest(record.salt, parts[2])):
        return None
    return Principal(record.owner, record.operator)
