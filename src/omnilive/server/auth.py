"""Who is calling: every /v1 request and the realtime WebSocket carry a key, resolved to a Principal.

    Authorization: Bearer olk_…          a user's key (omnilive users add / keys add; /v1/admin/users)
    Authorization: Bearer <--api-key>    the operator's single admin key (one-person setups)
    Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.<key or ek_… client secret>   (browsers)

With no users and no --api-key the server is open (it says so at start) and every caller is
the operator. /health, /metrics and the web app's static files are never guarded.

A user key costs one argon2 verification the first time it is seen; then the sha256 of the key
is remembered (in memory only) with its principal for `auth_cache_seconds`, after which one
cheap SELECT confirms the key is still active (revocations by `omnilive users` take effect
within that time; through /v1/admin/users at once). Keys are never logged.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from omnilive.server.api_keys import key_id_of, key_matches
from omnilive.server.errors import APIError, error_response
from omnilive.server.store import OPERATOR_OWNER, AccountStore, KeyRecord

_GUARDED_PREFIX = "/v1/"
_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
PRINCIPAL_SCOPE_KEY = "omnilive.principal"
CLIENT_SECRET_PREFIX = "ek_"
MAX_CLIENT_SECRETS_PER_USER = 100  # live at once: memory stays bounded whatever a user asks for


@dataclass(frozen=True)
class Principal:
    owner: str  # whose rows: a user id, or "" (OPERATOR_OWNER) for the operator
    name: str  # the user's name: shown to them and the /metrics label; never a key
    is_admin: bool
    quota_overrides: dict = field(default_factory=dict)


# the --api-key holder, and every caller of an open server ("(...)" is never a user's name)
OPERATOR = Principal(OPERATOR_OWNER, "(operator)", True)

# the principal of the request being served, for code that is not handed the request (metrics)
current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def principal_of(connection: HTTPConnection) -> Principal:
    """The caller of a /v1 route (a FastAPI dependency)."""
    principal = connection.scope.get(PRINCIPAL_SCOPE_KEY)
    if principal is None:  # a route outside /v1 asked: a wiring mistake, not the client's
        raise APIError(500, "This route is not authenticated.", None, "internal_error")
    return principal


def require_admin(connection: HTTPConnection) -> Principal:
    principal = principal_of(connection)
    if not principal.is_admin:
        raise APIError(403, "This route is for administrators only.", None, "admin_only")
    return principal


def presented_key(scope: Scope) -> str | None:
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if scope["type"] == "websocket":
        for protocol in headers.get("sec-websocket-protocol", "").split(","):
            if protocol.strip().startswith(_SUBPROTOCOL_PREFIX):
                return protocol.strip().removeprefix(_SUBPROTOCOL_PREFIX)
    return None


@dataclass
class _Verified:
    digest: bytes  # sha256 of the key: proves a later request holds the same key, without argon2
    hash: str  # the stored argon2 hash it was verified against (changes if the key is replaced)
    principal: Principal
    checked_at: float


class Authenticator:
    def __init__(self, operator_key: str | None, cache_seconds: float, client_secrets: ClientSecrets):
        self.operator_key = operator_key.encode() if operator_key else None
        self.cache_seconds = cache_seconds
        self.client_secrets = client_secrets
        self.accounts: AccountStore | None = None  # set when the lifespan opens the database
        self._verified: dict[str, _Verified] = {}
        self._argon2 = asyncio.Semaphore(1)  # wrong keys cannot take more than one core
        self._has_users: tuple[bool, float] | None = None

    async def authenticate(self, key: str | None, websocket: bool) -> Principal | str:
        """The caller's principal, or why they are refused."""
        if self.operator_key is None and not await self.has_users():
            return OPERATOR  # an open server: whatever key a client sends (the openai SDK needs one) is fine
        if key is None:
            return "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
        if self.operator_key is not None and hmac.compare_digest(key.encode(), self.operator_key):
            return OPERATOR
        if key.startswith(CLIENT_SECRET_PREFIX):
            principal = self.client_secrets.principal(key)
            if principal is None or not await self._still_active(principal):
                return "Incorrect or expired client secret provided."
            return principal if websocket else "Client secrets open realtime sessions only."
        key_id = key_id_of(key)
        principal = await self._user_principal(key, key_id) if key_id is not None else None
        return principal or "Incorrect API key provided."

    async def has_users(self) -> bool:
        now = time.monotonic()
        if self._has_users is None or now - self._has_users[1] > self.cache_seconds:
            found = self.accounts is not None and await asyncio.to_thread(self.accounts.has_users)
            self._has_users = (found, now)
        return self._has_users[0]

    async def _still_active(self, principal: Principal) -> bool:
        """A user revoked after asking for a client secret: their secrets end with them."""
        if principal.owner == OPERATOR_OWNER:
            return True
        return self.accounts is not None and await asyncio.to_thread(self.accounts.is_active, principal.owner)

    def forget(self, owner: str | None = None) -> None:
        """Drop remembered keys (of one user, or all): the next request checks the database."""
        for key_id, entry in list(self._verified.items()):
            if owner is None or entry.principal.owner == owner:
                del self._verified[key_id]
        self._has_users = None

    async def _user_principal(self, key: str, key_id: str) -> Principal | None:
        if self.accounts is None:
            return None
        digest, now = hashlib.sha256(key.encode()).digest(), time.monotonic()
        entry = self._verified.get(key_id)
        same_key = entry is not None and hmac.compare_digest(entry.digest, digest)
        if same_key and now - entry.checked_at < self.cache_seconds:
            return entry.principal
        record = await asyncio.to_thread(self.accounts.key_record, key_id)
        if record is None:
            self._verified.pop(key_id, None)
            return None
        if not (same_key and record.hash == entry.hash):
            async with self._argon2:
                if not self._just_verified(key_id, digest, record.hash):  # by a request that queued first
                    if not await asyncio.to_thread(key_matches, record.hash, key):
                        return None
        principal = _principal(record)
        self._verified[key_id] = _Verified(digest, record.hash, principal, now)
        return principal

    def _just_verified(self, key_id: str, digest: bytes, stored_hash: str) -> bool:
        entry = self._verified.get(key_id)
        return entry is not None and entry.hash == stored_hash and hmac.compare_digest(entry.digest, digest)


def _principal(record: KeyRecord) -> Principal:
    user = record.user
    return Principal(user.id, user.name, user.is_admin, dict(user.quotas))


class ClientSecrets:
    """Short-lived `ek_…` secrets that open a realtime session as the user who asked for them.

    In memory: a server restart ends them (they live minutes, by design).
    """

    def __init__(self) -> None:
        self._secrets: dict[str, tuple[Principal, float]] = {}

    def create(self, principal: Principal, seconds: int) -> tuple[str, int]:
        """(secret, expires_at in unix seconds). A user's oldest live secrets give way past a cap."""
        now = time.time()
        self._secrets = {s: v for s, v in self._secrets.items() if v[1] > now}
        theirs = [s for s, (owner, _) in self._secrets.items() if owner.owner == principal.owner]
        for oldest in theirs[: max(0, len(theirs) - MAX_CLIENT_SECRETS_PER_USER + 1)]:
            del self._secrets[oldest]
        secret = CLIENT_SECRET_PREFIX + secrets.token_hex(24)
        self._secrets[secret] = (principal, now + seconds)
        return secret, int(now + seconds)

    def principal(self, secret: str) -> Principal | None:
        found = self._secrets.get(secret)
        return found[0] if found is not None and found[1] > time.time() else None


class AuthMiddleware:
    """Resolves the caller of every /v1 request and WebSocket; refuses unknown keys (401, or 403 on
    a WebSocket handshake)."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator):
        self.app, self.authenticator = app, authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guarded = scope["type"] in ("http", "websocket") and scope["path"].startswith(_GUARDED_PREFIX)
        # CORS preflights carry no credentials by design; the CORS layer above answers them
        if not guarded or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        result = await self.authenticator.authenticate(presented_key(scope), scope["type"] == "websocket")
        if isinstance(result, Principal):
            scope[PRINCIPAL_SCOPE_KEY] = result
            token = current_principal.set(result)
            try:
                await self.app(scope, receive, send)
            finally:
                current_principal.reset(token)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "invalid api key"})
            return
        await error_response(401, result, None, "invalid_api_key")(scope, receive, send)
