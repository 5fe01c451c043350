"""Who may see what: a TOML file of users with argon2 password hashes, roles and teams.

```toml
[users.ada]
password = "$argon2id$v=19$m=65536,t=3,p=4$..."   # crm-ledger hash-password
role = "lead"                                      # sees only the teams listed
teams = ["team-01"]

[users.rita]
password = "$argon2id$..."
role = "auditor"                                   # sees every team, read-only like everyone
```

Without a users file the pages are open to whoever reaches the address (bound to the loopback
interface by default) and show every team.
"""

from __future__ import annotations

import contextlib
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from argon2 import Parameters, PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from web.errors import WebError

ROLES = frozenset({"lead", "auditor"})


@dataclass(frozen=True)
class User:
    """A signed-in person: a lead sees the listed teams, an auditor every team."""

    name: str
    role: str
    teams: frozenset[str]

    def can_see(self, team_id: str | None) -> bool:
        return self.role == "auditor" or (team_id is not None and team_id in self.teams)

    @property
    def sees_everything(self) -> bool:
        return self.role == "auditor"


#: Password checks run at once at most (argon2id takes 64 MiB each, with the recommended parameters).
MAX_CONCURRENT_CHECKS = 4

#: The user of a server started without a users file (on the loopback interface by default).
LOCAL_USER = User("local", "auditor", frozenset())


@dataclass(frozen=True)
class _Entry:
    user: User
    password_hash: str


class Users:
    """The users of a `serve --users` file; checks passwords against their argon2 hashes."""

    def __init__(self, entries: Mapping[str, _Entry]) -> None:
        self._entries = dict(entries)
        self._hasher = PasswordHasher()
        self._dummy_hash = _dummy_hash([e.password_hash for e in self._entries.values()])
        # Each check takes argon2's 64 MiB: every request thread checking at once (a burst of
        # wrong passwords) took gigabytes; the others wait their turn.
        self._checking = threading.BoundedSemaphore(MAX_CONCURRENT_CHECKS)

    @classmethod
    def load(cls, path: Path) -> Users:
        """Parse and check the file; every problem names the file and the user."""
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise WebError(f"{path}: cannot read the users file ({error})") from error
        table = document.get("users")
        if not isinstance(table, dict) or not table:
            raise WebError(f"{path}: no [users.NAME] tables")
        entries: dict[str, _Entry] = {}
        for name, spec in table.items():
            if not isinstance(spec, dict):
                raise WebError(f"{path}: users.{name}: expected a table")
            password, role, teams = spec.get("password"), spec.get("role", "lead"), spec.get("teams", [])
            if not isinstance(password, str) or not password.startswith("$argon2"):
                raise WebError(
                    f"{path}: users.{name}.password: expected an argon2 hash (crm-ledger hash-password)"
                )
            if role not in ROLES:
                raise WebError(f"{path}: users.{name}.role: must be one of {', '.join(sorted(ROLES))}")
            if not isinstance(teams, list) or not all(isinstance(t, str) for t in teams):
                raise WebError(f"{path}: users.{name}.teams: expected a list of team ids")
            if role == "lead" and not teams:
                raise WebError(f"{path}: users.{name}.teams: a lead needs at least one team")
            if not name or not name.isprintable() or ":" in name:
                # HTTP Basic sends "name:password": a name with a colon could never sign in,
                # and an empty one is anybody who leaves the name blank.
                raise WebError(
                    f"{path}: users.{name!r}: a user name is printable text without ':' (HTTP Basic)"
                )
            try:
                extract_parameters(password)
            except InvalidHashError:
                # Such a user could never sign in, and the refusal, at once, would tell that
                # the name exists (other wrong passwords cost a hash's time).
                raise WebError(
                    f"{path}: users.{name}.password: not a whole argon2 hash (crm-ledger hash-password)"
                ) from None
            entries[name] = _Entry(User(name, role, frozenset(teams)), password)
        return cls(entries)

    def authenticate(self, name: str, password: str) -> User | None:
        """The user when the password matches its hash; None otherwise (unknown name alike)."""
        entry = self._entries.get(name)
        with self._checking:
            if entry is None:
                # Spend the same effort for unknown names: timing does not tell who exists.
                with contextlib.suppress(VerificationError):
                    self._hasher.verify(self._dummy_hash, password)
                return None
            try:
                self._hasher.verify(entry.password_hash, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return None
        return entry.user


#: Shorter passwords are refused when hashed: a users file guards team members' scores.
MIN_PASSWORD_CHARS = 8


def hash_password(password: str) -> str:
    """An argon2id hash (argon2-cffi's recommended parameters) for a users file."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise WebError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
    return PasswordHasher().hash(password)


def _dummy_hash(hashes: list[str]) -> str:
    """A hash to check the passwords of unknown names against, made with the parameters most
    of the file's hashes have (memory, time, lanes): made with the library's defaults, it cost
    another time than the users' own hashes from elsewhere, which told whether a name exists."""
    known = [p for p in map(_parameters, hashes) if p is not None]  # (Parameters is unhashable)
    common = max(known, key=known.count, default=None)
    hasher = PasswordHasher() if common is None else PasswordHasher.from_parameters(common)
    return hasher.hash("not a password anyone has")


def _parameters(password_hash: str) -> Parameters | None:
    try:
        return extract_parameters(password_hash)
    except InvalidHashError:
        return None
