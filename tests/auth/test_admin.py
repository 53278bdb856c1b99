"""The admin CLI, run as ``python -m auth.admin`` subprocesses on a real SQLite file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher

from auth.clients import Client, ClientCredentials, Clients
from auth.keys import KeyRing
from auth.passwords import Passwords
from auth.schema import revocations
from auth.store import UserStore, create_engine, migrate

from .conftest import subprocess_env

PASSWORD = "s3cret-passphrase"


class Admin:
    def __init__(self, cwd: Path, database_url: str) -> None:
        self.cwd = cwd
        self.database_url = database_url

    def __call__(
        self, *args: str, stdin: str = "", env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "auth.admin", *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env=subprocess_env(AUTH_SERVICE__DATABASE_URL=self.database_url, **(env or {})),
            timeout=30,
            check=False,
        )


@pytest.fixture
def admin(tmp_path: Path) -> Admin:
    return Admin(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/db/auth.db")


async def _user_hash(database_url: str, username: str) -> str:
    engine = create_engine(database_url)
    try:
        user = await UserStore(engine).get_by_username(username)
    finally:
        await engine.dispose()
    assert user is not None
    return user.password_hash


def _never_shows(password: str, *results: subprocess.CompletedProcess[str]) -> None:
    for result in results:
        assert password not in result.stdout
        assert password not in result.stderr


async def test_add_list_disable_enable(admin: Admin) -> None:
    migrated = admin("migrate")
    assert migrated.returncode == 0, migrated.stderr

    added = admin("add-user", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert "alice" in added.stdout

    listed = admin("list-users")
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.splitlines()
    username, user_id, state, _created = line.split("\t")
    assert (username, state) == ("alice", "active")
    assert len(user_id) == 36

    disabled = admin("disable-user", "alice")
    assert disabled.returncode == 0, disabled.stderr
    assert admin("list-users").stdout.split("\t")[2] == "disabled"

    enabled = admin("enable-user", "alice")
    assert enabled.returncode == 0, enabled.stderr
    assert admin("list-users").stdout.split("\t")[2] == "active"

    stored = await _user_hash(admin.database_url, "alice")
    assert stored.startswith("$argon2id$")
    assert PasswordHasher().verify(stored, PASSWORD)
    assert stored not in listed.stdout
    _never_shows(PASSWORD, migrated, added, listed, disabled, enabled)


async def test_reset_password(admin: Admin) -> None:
    admin("migrate")
    admin("add-user", "alice", "--password-stdin", stdin=PASSWORD)
    reset = admin("reset-password", "alice", "--password-stdin", stdin="another-passphrase\n")
    assert reset.returncode == 0, reset.stderr
    stored = await _user_hash(admin.database_url, "alice")
    assert PasswordHasher().verify(stored, "another-passphrase")
    _never_shows("another-passphrase", reset)


def test_duplicate_user_fails(admin: Admin) -> None:
    admin("migrate")
    admin("add-user", "alice", "--password-stdin", stdin=PASSWORD)
    again = admin("add-user", "alice", "--password-stdin", stdin=PASSWORD)
    assert again.returncode == 1
    assert "already exists" in again.stderr


@pytest.mark.parametrize(("password", "reason"), [("", "empty"), ("short", "at least 8")])
def test_weak_password_is_refused(admin: Admin, password: str, reason: str) -> None:
    admin("migrate")
    result = admin("add-user", "alice", "--password-stdin", stdin=password + "\n")
    assert result.returncode == 1
    assert reason in result.stderr
    assert admin("list-users").stdout == ""


def test_unknown_user_fails(admin: Admin) -> None:
    admin("migrate")
    for command in ("disable-user", "enable-user"):
        result = admin(command, "nobody")
        assert result.returncode == 1
        assert "nobody" in result.stderr
    reset = admin("reset-password", "nobody", "--password-stdin", stdin=PASSWORD)
    assert reset.returncode == 1


def test_unmigrated_database_gives_a_hint_not_a_traceback(admin: Admin) -> None:
    result = admin("add-user", "alice", "--password-stdin", stdin=PASSWORD)
    assert result.returncode == 1
    assert "migrate" in result.stderr
    assert "Traceback" not in result.stderr
    assert "$argon2" not in result.stderr


def test_usage_error_exits_2(admin: Admin) -> None:
    assert admin("no-such-command").returncode == 2


async def test_clients_revocation_and_audit(admin: Admin) -> None:
    # Seeded in process: only the commands under test pay for a subprocess.
    await migrate(admin.database_url)
    engine = create_engine(admin.database_url)
    try:
        await UserStore(engine).add_user("alice", "$argon2id$not-a-real-hash")
    finally:
        await engine.dispose()

    confidential = admin("add-client", "ci-bot", "--confidential", "--scope", "codelab")
    assert confidential.returncode == 0, confidential.stderr
    (secret_line,) = [line for line in confidential.stdout.splitlines() if "secret" in line]
    secret = secret_line.split(": ", 1)[1]
    assert len(secret) >= 43
    public = admin("add-client", "codelab-cli", "--public")
    assert public.returncode == 0, public.stderr
    assert "secret" not in public.stdout
    # Setup scripts register their public clients on every run.
    again = admin("add-client", "codelab-cli", "--public", "--exist-ok")
    assert again.returncode == 0, again.stderr
    assert again.stdout == "public client codelab-cli is already registered\n"
    assert admin("add-client", "codelab-cli", "--public").returncode == 1, "only when asked"
    not_public = admin("add-client", "ci-bot", "--public", "--exist-ok")
    assert not_public.returncode == 1, "a confidential client is not the public one asked for"
    assert admin("disable-client", "codelab-cli").returncode == 0
    listed = admin("list-clients")
    assert listed.stdout.splitlines() == [
        "ci-bot\tconfidential\tactive\tcodelab",
        "codelab-cli\tpublic\tdisabled\tcodelab",
    ]
    _never_shows(secret, listed)

    revoked = admin("revoke-user", "alice")
    assert revoked.returncode == 0, revoked.stderr
    disabled = admin("disable-user", "alice")
    assert disabled.returncode == 0, disabled.stderr

    audit = admin("audit", "--limit", "5")
    assert audit.returncode == 0, audit.stderr
    events = [line.split("\t")[1] for line in audit.stdout.splitlines()]
    assert events == ["user_disabled", "user_revoked"]
    assert "alice" in audit.stdout

    engine = create_engine(admin.database_url)
    try:
        alice = await UserStore(engine).get_by_username("alice")
        assert alice is not None
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(revocations))).mappings().all()
        clients = Clients(
            engine,
            Passwords(),
            first_party=Client("codelab-ide", confidential=False, scopes=("codelab",)),
        )
        bot = await clients.authenticate(ClientCredentials("ci-bot", secret))
        assert bot.confidential
    finally:
        await engine.dispose()
    assert [(row["sub"], row["reason"]) for row in rows] == [
        (alice.id, "admin"),
        (alice.id, "disabled"),
    ]


def test_rotate_keys(admin: Admin) -> None:
    keys_dir = admin.cwd / "keys"
    env = {"AUTH_SERVICE__KEYS_DIR": str(keys_dir)}
    KeyRing.load_or_create(keys_dir)
    staged = admin("rotate-keys", env=env)
    assert staged.returncode == 0, staged.stderr
    assert "staged key" in staged.stdout
    again = admin("rotate-keys", env=env)
    assert again.returncode == 1
    assert "staged" in again.stderr
    listed = admin("list-keys", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [line.split("\t")[1] for line in listed.stdout.splitlines()] == ["current", "next"]
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in keys_dir.glob("*.pem"))
    _never_shows("PRIVATE KEY", staged, again, listed)


def test_password_equal_to_username_is_refused(admin: Admin) -> None:
    result = admin("add-user", "longusername", "--password-stdin", stdin="LongUsername\n")
    assert result.returncode == 1
    assert "username" in result.stderr
