"""API keys: who may read and who may change which knowledge base.

A TOML file of ``[[key]]`` tables (``ragqa serve --api-keys FILE``)::

    [[key]]
    name = "alice"                  # optional, shown in logs instead of the token
    token = "sk-alice-..."          # or: sha256 = "<hex digest of the token>", so the file holds no secret
    read = ["contracts", "hr"]      # KB names, or "*" for every KB
    write = ["contracts"]

A request then sends ``Authorization: Bearer TOKEN``; on the web page a person signs in with the
key's ``name`` and its token (``ragqa.api.access``), and gets the same rights. Tokens are compared
by their SHA-256 digest in constant time and never logged; a key's ``write`` implies ``read``;
names are unique (a key without one is called "key N", its place in the file).
"""

from __future__ import annotations

import hashlib
import hmac
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ragqa.errors import ConfigError

ALL = "*"


@dataclass(frozen=True)
class Key:
    name: str
    digest: str  # sha256 hex of the token
    read: frozenset[str] = field(default_factory=frozenset)
    write: frozenset[str] = field(default_factory=frozenset)

    def can_read(self, kb: str) -> bool:
        return bool({ALL, kb} & (self.read | self.write))

    def can_write(self, kb: str) -> bool:
        return bool({ALL, kb} & self.write)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class KeyRing:
    """The keys of one file; ``find(token)`` -> its Key or None."""

    def __init__(self, keys: list[Key]) -> None:
        self.keys = keys
        self._by_name = {key.name: key for key in keys}

    def by_name(self, name: str) -> Key | None:
        return self._by_name.get(name)

    @classmethod
    def load(cls, path: str | Path) -> "KeyRing":
        """Read and check a keys file; every mistake is one ConfigError line naming the table."""
        path = Path(path).expanduser()
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"--api-keys {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--api-keys {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--api-keys {path}: not valid TOML ({exc})") from None
        tables = data.get("key")
        unknown = sorted(set(data) - {"key"})
        if unknown or not isinstance(tables, list) or not tables:
            raise ConfigError(f"--api-keys {path}: expected [[key]] tables with token (or sha256), read and write"
                              + (f"; unknown top-level keys: {', '.join(unknown)}" if unknown else ""))
        keys = [_key(t, n, path) for n, t in enumerate(tables, 1)]
        seen: set[str] = set()
        names: set[str] = set()
        for key in keys:
            if key.digest in seen:
                raise ConfigError(f"--api-keys {path}: the same token appears twice (key {key.name!r})")
            if key.name in names:  # the page signs in by name
                raise ConfigError(f"--api-keys {path}: two keys are named {key.name!r}; names must be unique")
            seen.add(key.digest)
            names.add(key.name)
        return cls(keys)

    def find(self, token: str) -> Key | None:
        wanted = digest(token)
        found = None
        for key in self.keys:  # every key compared, in constant time: no timing hint of a near miss
            if hmac.compare_digest(key.digest, wanted):
                found = key
        return found


def _key(table: object, n: int, path: Path) -> Key:
    where = f"--api-keys {path}: key {n}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} is not a table")
    unknown = sorted(set(table) - {"name", "token", "sha256", "read", "write"})
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)} (fields: name, token, sha256, read, write)")
    token, hexdigest = table.get("token"), table.get("sha256")
    if (token is None) == (hexdigest is None):
        raise ConfigError(f"{where}: give exactly one of token and sha256")
    if token is not None:
        if not isinstance(token, str) or len(token) < 8:
            raise ConfigError(f"{where}: token must be a string of at least 8 characters")
        hexdigest = digest(token)
    elif not (isinstance(hexdigest, str) and len(hexdigest) == 64 and all(c in "0123456789abcdef" for c in hexdigest.lower())):
        raise ConfigError(f"{where}: sha256 must be the 64 hex digits of the token's SHA-256")
    lists = {}
    for field_name in ("read", "write"):
        value = table.get(field_name, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where}: {field_name} must be a list of KB names (or \"*\")")
        lists[field_name] = frozenset(value)
    if not lists["read"] and not lists["write"]:
        raise ConfigError(f"{where}: it may read nothing; give read and/or write KB names (or \"*\")")
    name = table.get("name") or f"key {n}"
    if not isinstance(name, str):
        raise ConfigError(f"{where}: name must be a string")
    return Key(name, hexdigest.lower(), lists["read"], lists["write"])
