"""The admin CLI, run as ``python -m auth.admin`` subprocesses on a real SQLite file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from auth.store import UserStore, create_engine

from .conftest import subprocess_env

PASSWORD = "s3cret-passphrase"


class Admin:
    def __init__(self, cwd: Path, database_url: str) -> None:
        self.cwd = cwd
        self.database_url = database_url

    def __call__(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "auth.admin", *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env=subprocess_env(AUTH_SERVICE__DATABASE_URL=self.database_url),
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
