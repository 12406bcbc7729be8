"""The accounts store (users, argon2-hashed keys) on SQLite and PostgreSQL, without a server."""

from __future__ import annotations

import pytest

from omnilive.server.api_keys import key_id_of, key_matches
from omnilive.server.store import AccountError, AccountStore, connect
from tests.server.test_store import database_url, postgres_url  # noqa: F401 - fixtures


@pytest.fixture
def accounts(database_url):  # noqa: F811 - the fixture imported above
    engine = connect(database_url)
    yield AccountStore(engine)
    engine.dispose()


def test_users_keys_and_revocation(accounts):
    assert not accounts.has_users()
    alice, alice_key = accounts.add_user("alice", is_admin=True, quotas={"requests_per_minute": 5})
    assert accounts.has_users() and accounts.is_active(alice.id)
    record = accounts.key_record(key_id_of(alice_key))
    assert record.user.name == "alice" and record.user.is_admin and record.user.quotas == {"requests_per_minute": 5}
    assert record.hash.startswith("$argon2id$") and alice_key not in record.hash
    wrong = alice_key[:-1] + ("1" if alice_key.endswith("0") else "0")  # one character off
    assert key_matches(record.hash, alice_key) and not key_matches(record.hash, wrong)

    second, second_key = accounts.add_key("alice")
    assert [k.id for k in accounts.get_user("alice").active_keys] == [key_id_of(alice_key), second.id]
    assert "revoked key" in accounts.revoke(second.shown)  # the listed form "olk_<id>…" names it
    assert accounts.key_record(second.id) is None and accounts.key_record(key_id_of(alice_key)) is not None

    updated = accounts.update_user("alice", is_admin=False, quotas={})
    assert not updated.is_admin and updated.quotas == {}
    assert "revoked user alice" in accounts.revoke("alice")
    assert accounts.key_record(key_id_of(alice_key)) is None and not accounts.is_active(alice.id)
    assert not accounts.has_users()
    assert [u.revoked_at is not None for u in accounts.list_users()] == [True]


def test_refusals_name_what_is_wrong(accounts):
    accounts.add_user("bob")
    for call, code in [
        (lambda: accounts.add_user("bob"), "user_exists"),
        (lambda: accounts.add_user("bad name"), "invalid_user_name"),
        (lambda: accounts.add_user("olk_looks_like_a_key"), "invalid_user_name"),
        (lambda: accounts.add_key("nobody"), "user_not_found"),
        (lambda: accounts.revoke("olk_000000000000"), "key_not_found"),
        (lambda: accounts.revoke("nobody"), "user_not_found"),
    ]:
        with pytest.raises(AccountError) as refused:
            call()
        assert refused.value.code == code
