"""Who am I, and (admins only) the users, their keys, quotas and usage.

    GET    /v1/me                                   the caller: name, admin, effective quotas
    GET    /v1/admin/users                          every user with keys (ids only), quotas, usage
    POST   /v1/admin/users                          {name, admin?, quotas?} → the user and a new key (shown once)
    GET    /v1/admin/users/{name}
    PATCH  /v1/admin/users/{name}                   {admin?, quotas?}  (quotas: overrides; {} = the defaults)
    DELETE /v1/admin/users/{name}                   revoke the user and all their keys
    POST   /v1/admin/users/{name}/keys              another key (shown once)
    DELETE /v1/admin/users/{name}/keys/{key_id}     revoke one key ("olk_<id>" or the id)
    GET    /v1/admin/users/{name}/conversations[/{id}]   only with admin_reads_conversations on (off by default)

The same as `omnilive users ...` on the command line. Usage counts since the server started,
and how many conversations each user keeps; never what is in them. Changes made here reach the
key cache at once; the CLI's within `auth_cache_seconds`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from omnilive.server.api_keys import key_id_named
from omnilive.server.auth import Principal, principal_of, require_admin
from omnilive.server.errors import APIError
from omnilive.server.quotas import Quotas
from omnilive.server.routes.conversations import ConversationList, ConversationOut, conversation_out
from omnilive.server.store import AccountError, AccountStore, KeyInfo, User
from omnilive.server.store.accounts import USER_NAME

router = APIRouter(tags=["users"])
admin = APIRouter(prefix="/v1/admin/users", tags=["admin"], dependencies=[Depends(require_admin)])

UserName = Annotated[str, Path(max_length=64)]
QuotaValue = Annotated[int | None, Field(None, ge=0, le=10**15, description="0 = no limit; null = the default")]


class QuotaOverrides(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests_per_minute: QuotaValue = None
    tokens_per_minute: QuotaValue = None
    concurrent_streams: QuotaValue = None
    upload_bytes_per_day: QuotaValue = None

    def given(self) -> dict:
        return {name: value for name, value in self.model_dump().items() if value is not None}


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=USER_NAME.pattern, max_length=64)
    admin: bool = False
    quotas: QuotaOverrides | None = None


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    admin: bool | None = None
    quotas: QuotaOverrides | None = None


class KeyOut(BaseModel):
    id: str = Field(description="olk_<key id>…: names the key, is not the key")
    object: Literal["api_key"] = "api_key"
    created_at: int
    revoked_at: int | None


class KeyCreated(KeyOut):
    key: str = Field(description="the whole key: shown this once, stored only hashed")


class UsageOut(BaseModel):
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    upload_bytes: int = 0
    running_streams: int = 0
    conversations: int = 0


class UserOut(BaseModel):
    object: Literal["user"] = "user"
    name: str
    admin: bool
    created_at: int
    revoked_at: int | None
    keys: list[KeyOut]
    quotas: dict[str, int] = Field(description="in effect: the defaults with this user's overrides")
    quota_overrides: dict[str, int]
    usage: UsageOut


class UserCreated(UserOut):
    key: str = Field(description="the user's first key: shown this once, stored only hashed")


class UserList(BaseModel):
    object: Literal["list"] = "list"
    data: list[UserOut]


class Me(BaseModel):
    object: Literal["user"] = "user"
    name: str
    admin: bool
    quotas: dict[str, int]


@router.get("/v1/me")
def me(request: Request, principal: Annotated[Principal, Depends(principal_of)]) -> Me:
    quotas = request.app.state.quotas.quotas_of(principal)
    return Me(name=principal.name, admin=principal.is_admin, quotas=quotas.__dict__)


@admin.get("")
def list_users(request: Request) -> UserList:
    conversations = request.app.state.history.conversations_by_owner()
    return UserList(data=[_user_out(request, u, conversations) for u in _accounts(request).list_users()])


@admin.post("", status_code=201)
def create_user(request: Request, body: UserCreate) -> UserCreated:
    quotas = body.quotas.given() if body.quotas else {}
    user, key = _account_call(lambda: _accounts(request).add_user(body.name, body.admin, quotas))
    _changed(request, user)
    return UserCreated(**_user_out(request, user).model_dump(), key=key)


@admin.get("/{name}")
def get_user(request: Request, name: UserName) -> UserOut:
    return _user_out(request, _existing(request, name))


@admin.patch("/{name}")
def update_user(request: Request, name: UserName, body: UserPatch) -> UserOut:
    quotas = body.quotas.given() if body.quotas is not None else None
    user = _account_call(lambda: _accounts(request).update_user(name, body.admin, quotas))
    _changed(request, user)
    return _user_out(request, user)


@admin.delete("/{name}")
def revoke_user(request: Request, name: UserName) -> UserOut:
    user = _existing(request, name)
    _account_call(lambda: _accounts(request).revoke(name))
    _changed(request, user)
    return _user_out(request, _existing(request, name))


@admin.post("/{name}/keys", status_code=201)
def create_key(request: Request, name: UserName) -> KeyCreated:
    info, key = _account_call(lambda: _accounts(request).add_key(name))
    return KeyCreated(**_key_out(info).model_dump(), key=key)


@admin.delete("/{name}/keys/{key_id}")
def revoke_key(request: Request, name: UserName, key_id: Annotated[str, Path(max_length=80)]) -> UserOut:
    found = key_id_named(key_id) or key_id_named(f"olk_{key_id}")
    if found is None:
        raise APIError(404, f"No such key: {key_id}", "key_id", "key_not_found")
    _account_call(lambda: _accounts(request).revoke_key(name, found))
    user = _existing(request, name)
    _changed(request, user)
    return _user_out(request, user)


@admin.get("/{name}/conversations")
def read_user_conversations(request: Request, name: UserName) -> ConversationList:
    owner, history = _readable_history(request, name)
    found = history.list_conversations(owner=owner, limit=1000)
    return ConversationList(data=[conversation_out(c) for c in found], total=history.count_conversations(owner=owner))


@admin.get("/{name}/conversations/{conversation_id}")
def read_user_conversation(request: Request, name: UserName, conversation_id: str) -> ConversationOut:
    owner, history = _readable_history(request, name)
    found = history.get_conversation(conversation_id, owner=owner)
    if found is None:
        raise APIError(404, f"No such conversation: {conversation_id}", "conversation_id", "conversation_not_found")
    return conversation_out(found)


# -- helpers -------------------------------------------------------------------------------------

_STATUS_BY_CODE = {"user_exists": 409, "user_not_found": 404, "key_not_found": 404, "invalid_user_name": 400}


def _accounts(request: Request) -> AccountStore:
    return request.app.state.accounts


def _account_call(call):
    try:
        return call()
    except AccountError as e:
        raise APIError(_STATUS_BY_CODE.get(e.code, 400), e.message, None, e.code) from None


def _existing(request: Request, name: str) -> User:
    user = _accounts(request).get_user(name)
    if user is None:
        raise APIError(404, f"No user named '{name}'.", "name", "user_not_found")
    return user


def _readable_history(request: Request, name: str):
    """(the user's owner id, the history store), if this server lets admins read conversations."""
    if not request.app.state.settings.admin_reads_conversations:
        raise APIError(403, "Admins cannot read users' conversations on this server "
                       "(OMNILIVE_ADMIN_READS_CONVERSATIONS is off).", None, "admin_reads_conversations_off")
    return _existing(request, name).id, request.app.state.history


def _changed(request: Request, user: User) -> None:
    """The key cache forgets this user: their next request sees the change (or the revocation)."""
    request.app.state.auth.forget(user.id)


def _seconds(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def _key_out(key: KeyInfo) -> KeyOut:
    return KeyOut(id=key.shown, created_at=_seconds(key.created_at), revoked_at=_seconds(key.revoked_at))


def _user_out(request: Request, user: User, conversations: dict[str, int] | None = None) -> UserOut:
    book = request.app.state.quotas
    usage = book.usage(user.id)
    if conversations is None:
        conversations = request.app.state.history.conversations_by_owner()
    counts = UsageOut(**(usage.summary() if usage else {}), conversations=conversations.get(user.id, 0))
    effective: Quotas = book.defaults.overridden(user.quotas)
    return UserOut(name=user.name, admin=user.is_admin, created_at=_seconds(user.created_at),
                   revoked_at=_seconds(user.revoked_at), keys=[_key_out(k) for k in user.keys],
                   quotas=effective.__dict__, quota_overrides=user.quotas, usage=counts)
