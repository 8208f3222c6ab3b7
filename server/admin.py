"""`codeface admin create-user|create-key`: bootstrap identities from the command line."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from datetime import datetime, timedelta, timezone

from server.credentials import api_key_hash, hash_password, new_api_key, visible_prefix
from server.settings import Settings
from storage import Database, upgrade_database
from storage.repository import ApiKeys, Users


async def create_user(settings: Settings, username: str, password: str, is_admin: bool) -> str:
    database = Database(settings.database_url)
    try:
        async with database.session() as session:
            users = Users(session)
            if await users.by_username(username) is not None:
                raise SystemExit(f"the username {username!r} is taken")
            user = await users.create(username, password_hash=await hash_password(password), is_admin=is_admin)
            await session.commit()
            return str(user.id)
    finally:
        await database.close()


async def create_key(settings: Settings, username: str, name: str, expires_in_days: int | None,
                     limits: dict[str, int | None]) -> str:
    database = Database(settings.database_url)
    try:
        async with database.session() as session:
            user = await Users(session).by_username(username)
            if user is None:
                raise SystemExit(f"no user {username!r}: create it first with `codeface admin create-user`")
            key = new_api_key()
            expires_at = (datetime.now(timezone.utc) + timedelta(days=expires_in_days)) if expires_in_days else None
            await ApiKeys(session).create(user.id, key_hash=api_key_hash(key), prefix=visible_prefix(key), name=name,
                                          expires_at=expires_at, **limits)
            await session.commit()
            return key
    finally:
        await database.close()


def run(args: argparse.Namespace, settings: Settings) -> int:
    upgrade_database(settings.database_url)
    if args.admin_command == "create-user":
        password = args.password or getpass.getpass(f"password for {args.username}: ")
        if len(password) < 8:
            raise SystemExit("the password must have at least 8 characters")
        user_id = asyncio.run(create_user(settings, args.username, password, args.admin))
        print(f"created user {args.username} ({user_id}){' with the admin role' if args.admin else ''}")
    else:
        limits = {"requests_per_minute": args.rpm, "tokens_per_minute": args.tpm,
                  "max_concurrent_streams": args.streams}
        key = asyncio.run(create_key(settings, args.username, args.name, args.expires_in_days, limits))
        print("API key (shown once; only its hash is stored):", file=sys.stderr)
        print(key)
    return 0


def add_commands(admin: argparse.ArgumentParser) -> None:
    commands = admin.add_subparsers(dest="admin_command", required=True)
    user = commands.add_parser("create-user", help="create a user with a password")
    user.add_argument("--username", required=True)
    user.add_argument("--password", help="default: asked for without echo")
    user.add_argument("--admin", action="store_true", help="give the admin role")
    key = commands.add_parser("create-key", help="create an API key for a user and print it once")
    key.add_argument("--username", required=True)
    key.add_argument("--name", default="")
    key.add_argument("--expires-in-days", type=int)
    key.add_argument("--rpm", type=int, help="requests per minute for this key (0 = unlimited)")
    key.add_argument("--tpm", type=int, help="tokens per minute for this key (0 = unlimited)")
    key.add_argument("--streams", type=int, help="concurrent generations for this key (0 = unlimited)")
