"""API keys: how they look, how they are hashed, and what their scopes grant. No I/O here.

A key is ``ct_`` followed by 43 URL-safe characters (256 random bits). Only its SHA-256 is
stored: a key that random cannot be found from its hash, so no slow password hash is needed.

Scopes:

- ``parking:read``: free spots and spots (the mobile app);
- ``containers:read``: containers, their history, collection rounds, zones (dispatch);
- ``ops``: dead letters and their replay, devices needing attention (operators);
- ``admin``: API keys, and everything the other scopes grant.

``admin`` implies the others: the operator who can create any key could give themselves any
scope anyway, so making them hold a second key would add a secret without adding safety.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

KEY_PREFIX = "ct_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_KEY = re.compile(r"^ct_[A-Za-z0-9_-]{43}$")


class Scope(StrEnum):
    """What a key may do."""

    PARKING_READ = "parking:read"
    CONTAINERS_READ = "containers:read"
    OPS = "ops"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key, without the key itself."""

    id: int
    name: str
    scopes: frozenset[Scope]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def grants(self, scope: Scope) -> bool:
        """Whether this key may do what ``scope`` allows (``admin`` allows everything)."""
        return scope in self.scopes or Scope.ADMIN in self.scopes


def generate_key() -> str:
    """A new random key, ``ct_`` and 256 bits in URL-safe base64."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> bytes:
    """The SHA-256 of ``key``: what the database stores and looks keys up by."""
    return hashlib.sha256(key.encode()).digest()


def same_hash(a: bytes, b: bytes) -> bool:
    """Compare two hashes in constant time."""
    return hmac.compare_digest(a, b)


def looks_like_key(text: str) -> bool:
    """Whether ``text`` has the shape of a citytel key (cheap, before any lookup)."""
    return _KEY.match(text) is not None


def check_name(name: str) -> str:
    """``name`` if it can name a key, else ValueError saying what a name may be."""
    if _NAME.match(name) is None:
        message = (
            f"a key name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter "
            f"or digit; got {name!r}"
        )
        raise ValueError(message)
    return name


def parse_scopes(names: Iterable[str]) -> frozenset[Scope]:
    """Scopes from their names, or ValueError naming the unknown one and the valid ones."""
    found = set()
    for name in names:
        try:
            found.add(Scope(name))
        except ValueError:
            valid = ", ".join(s.value for s in Scope)
            message = f"unknown scope {name!r}; the scopes are {valid}"
            raise ValueError(message) from None
    if not found:
        message = "a key needs at least one scope"
        raise ValueError(message)
    return frozenset(found)
