"""Manage the auth service: ``python -m auth.admin`` or ``codelab-auth-admin``.

Subcommands::

    migrate                          apply pending schema migrations
    add-user USERNAME [--password-stdin]
    list-users
    disable-user USERNAME            refuse logins, revoke refresh tokens, feed row "disabled"
    enable-user USERNAME
    reset-password USERNAME [--password-stdin]
    revoke-user USERNAME             revoke refresh tokens, feed row "admin" (logs out everywhere)
    add-client CLIENT_ID (--confidential | --public) [--scope S ...] [--exist-ok]
    list-clients
    disable-client CLIENT_ID / enable-client CLIENT_ID
    rotate-keys                      stage a new signing key, delete retired ones
    list-keys                        the key schedule
    audit [--limit N]                recent audit events, newest first

The database and keys directory come from ``AUTH_SERVICE__*`` (same defaults
as the service). Passwords are read from stdin (first line,
``--password-stdin``) or asked for twice without echo; they are checked
against the password policy and never printed or logged. A confidential
client's secret is printed once, by ``add-client``, and stored only as an
argon2id hash. Exit status: 0 on success, 1 when the command failed (unknown
user, duplicate, weak password, a key already staged), 2 on a usage or
configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from auth import audit
from auth.audit import AuditLog
from auth.clients import Client, Clients
from auth.config import AuthConfig
from auth.errors import AlreadyExists, AuthError, NotFound, WeakPassword
from auth.keys import KeyFileError, KeyRing, RotationPending, rotate_keys
from auth.passwords import Passwords, check_password_policy
from auth.refresh import RefreshTokens
from auth.revocations import record_revocation
from auth.store import UserStore, check_username, create_engine, migrate
from auth.tokens import parse_scope
from mesh.config import ConfigError, load


class _NoPasswords(Passwords):
    """For client commands that never hash or verify (list, disable, enable)."""

    def __init__(self) -> None:  # no dummy hash: nothing here verifies
        pass


_NO_PASSWORDS = _NoPasswords()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codelab-auth-admin", description="Manage the CodeLab auth service."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("migrate", help="apply pending schema migrations")
    add = commands.add_parser("add-user", help="create a user")
    add.add_argument("username")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    commands.add_parser("list-users", help="list users (never shows password hashes)")
    for name, text in (
        ("disable-user", "refuse logins and revoke every token of the user"),
        ("enable-user", "allow logins again"),
        ("revoke-user", "revoke every token of the user (log out everywhere)"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("username")
    reset = commands.add_parser("reset-password", help="set a new password")
    reset.add_argument("username")
    reset.add_argument("--password-stdin", action="store_true", help="read the password from stdin")

    client = commands.add_parser("add-client", help="register an OAuth client")
    client.add_argument("client_id")
    kind = client.add_mutually_exclusive_group(required=True)
    kind.add_argument(
        "--confidential",
        action="store_true",
        help="client_credentials with a generated secret (printed once)",
    )
    kind.add_argument("--public", action="store_true", help="password + refresh_token, no secret")
    client.add_argument(
        "--scope",
        action="append",
        default=None,
        help="a scope the client may request (repeatable; default: AUTH_SERVICE__SCOPES)",
    )
    client.add_argument(
        "--exist-ok",
        action="store_true",
        help="a public client already registered is success (for setup scripts)",
    )
    commands.add_parser("list-clients", help="list registered clients (never shows secrets)")
    for name, text in (("disable-client", "refuse the client"), ("enable-client", "allow it")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("client_id")
    commands.add_parser("rotate-keys", help="stage a new signing key; delete retired keys")
    commands.add_parser("list-keys", help="show the signing key schedule")
    audit_parser = commands.add_parser("audit", help="recent audit events, newest first")
    audit_parser.add_argument("--limit", type=int, default=50)
    return parser


def read_password(*, from_stdin: bool, username: str) -> str:
    """The new password, policy-checked; raises :class:`WeakPassword`."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("New password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise WeakPassword("the passwords do not match")
    check_password_policy(password, username=username)
    return password


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


async def revoke_user(engine: AsyncEngine, username: str, *, reason: str) -> str:
    """Revoke every refresh token of the user and put them on the revocation feed.

    Returns the user id; raises :class:`NotFound`. One transaction.
    """
    user = await UserStore(engine).get_by_username(username)
    if user is None:
        raise NotFound(f"no user {username!r}")
    now = time.time()
    async with engine.begin() as conn:
        await RefreshTokens.revoke_user(conn, user.id)
        await record_revocation(conn, user.id, reason, now=now)
        await audit.record(
            conn,
            "user_disabled" if reason == "disabled" else "user_revoked",
            at=now,
            user_id=user.id,
            username=user.username,
            detail="by codelab-auth-admin",
        )
    return user.id


def _rotate_keys(config: AuthConfig) -> None:
    try:
        rotation = rotate_keys(
            config.keys_dir,
            publish_ahead=config.keys_publish_ahead,
            retire_after=config.key_retire_after,
        )
    except RotationPending as exc:
        raise AuthError(f"{exc}; rotate again after that") from None
    except (KeyFileError, ValueError, OSError) as exc:
        raise AuthError(f"keys directory {config.keys_dir}: {exc}") from None
    for key in rotation.deleted:
        print(f"deleted retired key {key.kid} ({key.path.name})")
    print(
        f"staged key {rotation.staged.kid} ({rotation.staged.path.name}); "
        f"published now, signs from {_when(rotation.signs_at)}"
    )


def _list_keys(config: AuthConfig) -> None:
    try:
        ring = KeyRing.load(
            config.keys_dir,
            publish_ahead=config.keys_publish_ahead,
            retire_after=config.key_retire_after,
        )
    except (KeyFileError, ValueError, OSError) as exc:
        raise AuthError(f"keys directory {config.keys_dir}: {exc}") from None
    schedule = ring.schedule()
    states = {schedule.current.kid: "current"}
    states.update({key.kid: "next" for key in schedule.next})
    states.update({key.kid: "retiring" for key in schedule.retiring})
    states.update({key.kid: "retired" for key in schedule.retired})
    for key in ring.keys:
        print(f"{key.kid}\t{states[key.kid]}\t{key.alg}\t{key.path.name}")


async def _run(args: argparse.Namespace, config: AuthConfig) -> None:
    if args.command == "migrate":
        await migrate(config.database_url)
        print("database is at the newest schema")
        return
    if args.command == "rotate-keys":
        _rotate_keys(config)
        return
    if args.command == "list-keys":
        _list_keys(config)
        return
    if args.command in {"add-user", "reset-password"}:
        if args.command == "add-user":
            check_username(args.username)
        password = read_password(from_stdin=args.password_stdin, username=args.username)
        password_hash = await Passwords().hash_async(password)
        del password
    engine = create_engine(config.database_url)
    try:
        users = UserStore(engine)
        # Passwords() costs one argon2 hash (its dummy); only secret-making commands pay it.
        clients = Clients(
            engine,
            Passwords() if args.command == "add-client" else _NO_PASSWORDS,
            first_party=Client(config.client_id, confidential=False, scopes=config.scopes),
        )
        if args.command == "add-user":
            user = await users.add_user(args.username, password_hash)
            print(f"added user {user.username} (id {user.id})")
        elif args.command == "reset-password":
            await users.set_password_hash(args.username, password_hash)
            print(f"password of {args.username} changed")
        elif args.command == "list-users":
            for user in await users.list_users():
                state = "disabled" if user.disabled else "active"
                created = user.created_at.isoformat(timespec="seconds")
                print(f"{user.username}\t{user.id}\t{state}\t{created}")
        elif args.command == "disable-user":
            await users.set_disabled(args.username, True)
            await revoke_user(engine, args.username, reason="disabled")
            print(f"user {args.username} disabled; its tokens are revoked")
        elif args.command == "enable-user":
            await users.set_disabled(args.username, False)
            print(f"user {args.username} enabled")
        elif args.command == "revoke-user":
            await revoke_user(engine, args.username, reason="admin")
            print(f"every token of {args.username} is revoked")
        elif args.command == "add-client":
            scopes = (
                config.scopes
                if not args.scope
                else parse_scope(" ".join(args.scope), allowed=args.scope)
            )
            try:
                secret = await clients.add(
                    args.client_id, confidential=args.confidential, scopes=scopes
                )
            except AlreadyExists:
                existing = await clients.get(args.client_id)
                if not (args.exist_ok and args.public and existing and not existing.confidential):
                    raise
                print(f"public client {args.client_id} is already registered")
                return
            kind = "confidential" if secret else "public"
            print(f"added {kind} client {args.client_id} (scopes: {' '.join(scopes)})")
            if secret is not None:
                print(f"client_secret: {secret}")
                print("store it now: it is shown only this once", file=sys.stderr)
        elif args.command == "list-clients":
            for client in await clients.list():
                kind = "confidential" if client.confidential else "public"
                state = "disabled" if client.disabled else "active"
                print(f"{client.client_id}\t{kind}\t{state}\t{' '.join(client.scopes)}")
        elif args.command in {"disable-client", "enable-client"}:
            disabled = args.command == "disable-client"
            await clients.set_disabled(args.client_id, disabled)
            print(f"client {args.client_id} {'disabled' if disabled else 'enabled'}")
        elif args.command == "audit":
            for event in await AuditLog(engine).recent(max(1, args.limit)):
                fields = (
                    _when(event.at),
                    event.event,
                    event.username or event.user_id or "-",
                    event.client_id or "-",
                    event.address or "-",
                    event.detail or "",
                )
                print("\t".join(fields))
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point; exits with the documented status."""
    args = _parser().parse_args(argv)
    try:
        config = load(AuthConfig, os.environ)
    except ConfigError as exc:
        print(f"codelab-auth-admin: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        asyncio.run(_run(args, config))
    except AuthError as exc:
        print(f"codelab-auth-admin: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except SQLAlchemyError as exc:
        reason = exc.orig if isinstance(exc, DBAPIError) else exc
        print(f"codelab-auth-admin: database error: {reason}", file=sys.stderr)
        print("codelab-auth-admin: has the database been migrated (migrate)?", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
