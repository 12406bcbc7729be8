"""`omnilive users ...`: manage users and API keys in a server's database, running or not.

    omnilive users add alice [--admin] [--requests-per-minute 60 ...]   the new key is the last word printed
    omnilive users keys add alice                                        another key for alice
    omnilive users list
    omnilive users set alice [--admin | --no-admin] [--tokens-per-minute 20000 ...] [--clear-quotas]
    omnilive users revoke alice          (or one key: revoke olk_3f2a9c0b1d4e… / the whole key)

They read the same settings as `serve` (--data-dir, OMNILIVE_DATA_DIR, OMNILIVE_DATABASE_URL),
so they act on the database a server uses; a running server sees new users at once and
revocations within its `auth_cache_seconds`. Keys are printed once and stored only as argon2
hashes: a lost key is replaced (keys add), never recovered.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from pydantic import ValidationError

from omnilive.server.quotas import QUOTA_NAMES
from omnilive.server.settings import Settings
from omnilive.server.store import AccountError, AccountStore, User, connect


def add_users_parser(commands) -> None:
    """The `users` command and its subcommands, on the main parser's subparsers."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--data-dir", help="the server's data dir (its SQLite database lives there)")
    where.add_argument("--database-url", help="the server's database URL, when not the SQLite file in DATA_DIR")
    quotas = argparse.ArgumentParser(add_help=False)
    for name in QUOTA_NAMES:
        quotas.add_argument("--" + name.replace("_", "-"), type=_non_negative, metavar="N",
                            help=f"this user's {name.replace('_', ' ')} (0 = no limit; default: the server's)")

    users = commands.add_parser("users", help="manage users and their API keys")
    actions = users.add_subparsers(dest="users_command", required=True)
    add = actions.add_parser("add", parents=[where, quotas], help="add a user; prints their first API key")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="may manage users through /v1/admin/users")
    actions.add_parser("list", parents=[where], help="list users, their keys (ids only) and quotas")
    revoke = actions.add_parser("revoke", parents=[where], help="revoke a user (all their keys) or one key")
    revoke.add_argument("target", metavar="NAME|KEY", help="a user name, a whole key, or a key id olk_<id>")
    change = actions.add_parser("set", parents=[where, quotas], help="change a user's admin right or quotas")
    change.add_argument("name")
    change.add_argument("--admin", action=argparse.BooleanOptionalAction, default=None)
    change.add_argument("--clear-quotas", action="store_true", help="back to the server's default quotas")
    keys = actions.add_parser("keys", help="manage one user's keys")
    key_actions = keys.add_subparsers(dest="keys_command", required=True)
    key_add = key_actions.add_parser("add", parents=[where], help="add a key to a user; prints it")
    key_add.add_argument("name")


def run_users(args: argparse.Namespace) -> int:
    given = {name: getattr(args, name) for name in ("data_dir", "database_url") if getattr(args, name, None)}
    try:
        settings = Settings(**given)
    except ValidationError as e:
        print(f"omnilive: invalid settings:\n{e}", file=sys.stderr)
        return 2
    engine = connect(settings.resolved_database_url)
    try:
        return _run(AccountStore(engine), args)
    except AccountError as e:
        print(f"omnilive users: {e.message}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()


def _run(accounts: AccountStore, args: argparse.Namespace) -> int:
    command = args.users_command
    if command == "add":
        user, key = accounts.add_user(args.name, args.admin, _quota_flags(args))
        print(f"added user {user.name}{' (admin)' if user.is_admin else ''}")
        print(f"API key, shown only this once: {key}")
    elif command == "keys":
        info, key = accounts.add_key(args.name)
        print(f"added key {info.shown} to user {args.name}")
        print(f"API key, shown only this once: {key}")
    elif command == "list":
        _print_users(accounts.list_users())
    elif command == "revoke":
        print(accounts.revoke(args.target))
    elif command == "set":
        user = accounts.get_user(args.name)
        quotas = None
        if args.clear_quotas or _quota_flags(args):
            quotas = {**({} if args.clear_quotas or user is None else user.quotas), **_quota_flags(args)}
        user = accounts.update_user(args.name, args.admin, quotas)
        print(f"user {user.name}: admin={'yes' if user.is_admin else 'no'}, quotas={_quota_text(user)}")
    return 0


def _quota_flags(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in QUOTA_NAMES if getattr(args, name, None) is not None}


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 (no limit) or more")
    return value


def _quota_text(user: User) -> str:
    overrides = user.quotas
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) if overrides else "server defaults"


def _print_users(users: list[User]) -> None:
    if not users:
        print("no users: the server is open unless it runs with --api-key")
        return
    rows = [("NAME", "ADMIN", "STATUS", "KEYS", "CREATED", "QUOTAS")]
    for user in users:
        keys = " ".join(k.shown for k in user.active_keys) or "-"
        status = "revoked" if user.revoked_at else "active"
        rows.append((user.name, "yes" if user.is_admin else "no", status, keys, _day(user.created_at),
                     _quota_text(user)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")


