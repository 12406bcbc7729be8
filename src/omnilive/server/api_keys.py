"""API keys: their format, and argon2 hashes of them (only the hash is stored).

    olk_3f2a9c0b1d4e_<64 hex>        "olk_" + key id (12 hex, not secret) + "_" + secret (256 bits)

The key id finds the one stored hash to check, so a request costs one argon2 verification
(~50 ms by design) at most; server/auth.py caches what it verified. A key is shown once, when
it is made; listings show only `olk_<key id>…`.
"""

from __future__ import annotations

import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

KEY_PREFIX = "olk_"
_KEY = re.compile(r"^olk_([0-9a-f]{12})_([0-9a-f]{64})$")
_KEY_ID = re.compile(r"^olk_([0-9a-f]{12})(?:…|\.\.\.)?$")  # how listings show a key: its id alone
_hasher = PasswordHasher()  # argon2id, RFC 9106's low-memory parameters


def new_key() -> tuple[str, str]:
    """(key id, the whole key)."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_hex(32)}"


def key_id_of(key: str) -> str | None:
    """The key id of a well-formed key, else None (no database lookup for junk)."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def key_id_named(text: str) -> str | None:
    """The key id in a whole key or in its listed form `olk_<id>` (what `users revoke` accepts)."""
    match = _KEY.match(text) or _KEY_ID.match(text)
    return match.group(1) if match else None


def shown(key_id: str) -> str:
    return f"{KEY_PREFIX}{key_id}…"


def hash_key(key: str) -> str:
    return _hasher.hash(key)


def key_matches(stored_hash: str, key: str) -> bool:
    try:
        return _hasher.verify(stored_hash, key)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
