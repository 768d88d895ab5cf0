"""Where ragqa keeps things, and the one way it replaces a file.

- ``default_cache_dir`` / ``default_data_dir``: the XDG folders (caches; knowledge bases).
- ``atomic_path`` / ``atomic_file`` / ``write_atomic``: a new version of a file is written beside
  it, fsynced, and renamed over it, so a reader (or a process killed mid-write) sees the old file
  whole or the new one whole, never half of one.
- ``is_under``: whether a path lies inside a folder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def default_cache_dir() -> Path:
    """Per-user cache folder: $XDG_CACHE_HOME/ragqa, else ~/.cache/ragqa."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ragqa"


def default_data_dir() -> Path:
    """Per-user data folder (knowledge bases live here): $XDG_DATA_HOME/ragqa, else ~/.local/share/ragqa."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "ragqa"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write the new version to (by name, for libraries that
    write files themselves); on a clean exit it is fsynced and renamed over ``path``, on an error
    removed. The temporary name is ``.<name>.<random>.tmp``, so a folder's leftovers glob as ``.*.tmp``."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        # mkstemp makes the file 0600; the result gets the old file's mode, or what the umask allows
        with contextlib.suppress(OSError):
            os.fchmod(fd, _mode_for(path))
        os.close(fd)
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without setting it (os.umask can only be read by changing it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


@contextlib.contextmanager
def atomic_file(path: str | Path, *, binary: bool = False) -> Iterator[IO[Any]]:
    """An open file (text UTF-8, or ``binary``) that replaces ``path`` when the block ends cleanly."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8") as fh:
            yield fh


def write_atomic(path: str | Path, data: str | bytes, *, make_parents: bool = True) -> None:
    """Replace ``path`` with ``data`` (text as UTF-8) in one rename; the old content stays until then."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, binary=isinstance(data, bytes)) as fh:
        fh.write(data)


def kb_path(path: str | Path) -> str:
    """The name a knowledge base keeps a file under: absolute, ``~`` expanded, ``..`` folded, but
    symlinks *not* resolved, so a file reached through a link is under the folder it was found in
    (``--sync`` and ``kb remove FOLDER`` then see it there, and a deleted link is a deleted file).

    >>> kb_path("/docs/a/../b.md")
    '/docs/b.md'
    """
    return os.path.abspath(os.path.expanduser(str(path)))


def is_under(path: Path, root: Path) -> bool:
    """``path`` is ``root`` or inside it (by their names; neither is resolved here)."""
    return path == root or root in path.parents
