"""Manage the auth service's users: ``python -m auth.admin`` or ``codelab-auth-admin``.

Subcommands::

    migrate                          apply pending schema migrations
    add-user USERNAME [--password-stdin]
    list-users
    disable-user USERNAME
    enable-user USERNAME
    reset-password USERNAME [--password-stdin]

The database comes from ``AUTH_SERVICE__DATABASE_URL`` (same default as the
service). Passwords are read from stdin (first line, ``--password-stdin``) or
asked for twice without echo; they are checked against the password policy and
never printed or logged. Exit status: 0 on success, 1 when the command failed
(unknown user, duplicate, weak password), 2 on a usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from auth.config import ENV_PREFIX, AuthConfig
from auth.errors import AuthError, WeakPassword
from auth.passwords import Passwords, check_password_policy
from auth.store import UserStore, check_username, create_engine, migrate
from mesh.env import ConfigError, Env


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codelab-auth-admin", description="Manage users of the CodeLab auth service."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("migrate", help="apply pending schema migrations")
    add = commands.add_parser("add-user", help="create a user")
    add.add_argument("username")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    commands.add_parser("list-users", help="list users (never shows password hashes)")
    for name, text in (("disable-user", "refuse new tokens"), ("enable-user", "allow tokens")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("username")
    reset = commands.add_parser("reset-password", help="set a new password")
    reset.add_argument("username")
    reset.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    return parser


def read_password(*, from_stdin: bool) -> str:
    """The new password, policy-checked; raises :class:`WeakPassword`."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("New password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise WeakPassword("the passwords do not match")
    check_password_policy(password)
    return password


async def _run(args: argparse.Namespace, config: AuthConfig) -> None:
    if args.command == "migrate":
        await migrate(config.database_url)
        print("database is at the newest schema")
        return
    if args.command in {"add-user", "reset-password"}:
        if args.command == "add-user":
            check_username(args.username)
        password = read_password(from_stdin=args.password_stdin)
        password_hash = await Passwords().hash_async(password)
        del password
    engine = create_engine(config.database_url)
    try:
        users = UserStore(engine)
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
        elif args.command in {"disable-user", "enable-user"}:
            disabled = args.command == "disable-user"
            await users.set_disabled(args.username, disabled)
            print(f"user {args.username} {'disabled' if disabled else 'enabled'}")
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point; exits with the documented status."""
    args = _parser().parse_args(argv)
    try:
        config = AuthConfig.from_env(Env(ENV_PREFIX))
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
