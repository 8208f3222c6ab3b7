"""`codeface admin create-user|create-key`: bootstrap identities from the command line. The functions here are a
library too (tests and load tests call them) and raise domain errors; only `run` turns them into an exit."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from server.apis.codeface.identity.protocol import MIN_PASSWORD_LENGTH, NewKey
from server.exceptions import ServiceError
from server.security.identity import IdentityService
from server.settings import Settings
from storage import Database, upgrade_database

T = TypeVar("T")


async def _with_identity(settings: Settings, work: Callable[[IdentityService], Awaitable[T]]) -> T:
    database = Database(settings.database_url)
    try:
        return await work(IdentityService(database, tokens=None, authenticator=None))
    finally:
        await database.close()


async def create_user(settings: Settings, username: str, password: str, is_admin: bool,
                      models: list[str] | None = None) -> str:
    """Returns the new user's id; raises Conflict when the name is taken. `models`: what the user may use."""
    user = await _with_identity(settings, lambda identity: identity.create_user(None, username, password, is_admin,
                                                                                models))
    return str(user.id)


async def create_key(settings: Settings, username: str, name: str, expires_in_days: int | None,
                     limits: dict[str, int | None], models: list[str] | None = None) -> str:
    """Returns the key (shown once); raises NotFound for an unknown user. `models`: what the key may use."""
    spec = NewKey(name=name, expires_in_days=expires_in_days, models=models, **limits)

    async def issue(identity: IdentityService) -> str:
        user = await identity.user_by_name(username)
        return (await identity.issue_key_for(user.id, spec)).secret

    return await _with_identity(settings, issue)


def run(args: argparse.Namespace, settings: Settings) -> int:
    upgrade_database(settings.database_url)
    try:
        if args.admin_command == "create-user":
            password = args.password or getpass.getpass(f"password for {args.username}: ")
            if len(password) < MIN_PASSWORD_LENGTH:
                raise SystemExit(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
            user_id = asyncio.run(create_user(settings, args.username, password, args.admin, args.models))
            print(f"created user {args.username} ({user_id}){' with the admin role' if args.admin else ''}")
        else:
            limits = {"requests_per_minute": args.rpm, "tokens_per_minute": args.tpm,
                      "max_concurrent_streams": args.streams, "weight": args.weight}
            key = asyncio.run(create_key(settings, args.username, args.name, args.expires_in_days, limits,
                                         args.models))
            print("API key (shown once; only its hash is stored):", file=sys.stderr)
            print(key)
    except ServiceError as exc:
        raise SystemExit(str(exc)) from None
    return 0


def add_commands(admin: argparse.ArgumentParser) -> None:
    commands = admin.add_subparsers(dest="admin_command", required=True)
    user = commands.add_parser("create-user", help="create a user with a password")
    user.add_argument("--username", required=True)
    user.add_argument("--password", help="default: asked for without echo")
    user.add_argument("--admin", action="store_true", help="give the admin role")
    user.add_argument("--models", nargs="+", help="the models (base model, adapters) this user may use (default: all)")
    key = commands.add_parser("create-key", help="create an API key for a user and print it once")
    key.add_argument("--username", required=True)
    key.add_argument("--name", default="")
    key.add_argument("--expires-in-days", type=int)
    key.add_argument("--rpm", type=int, help="requests per minute for this key (0 = unlimited)")
    key.add_argument("--tpm", type=int, help="tokens per minute for this key (0 = unlimited)")
    key.add_argument("--streams", type=int, help="concurrent generations for this key (0 = unlimited)")
    key.add_argument("--weight", type=int, help="this key's share of the engine's queue under overload (default 1)")
    key.add_argument("--models", nargs="+", help="the models this key may use, within its user's (default: all)")
