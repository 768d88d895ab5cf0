"""Where uploaded documents are kept: ``<data_dir>/uploads/<kb>/<file name>``, for the web page and the API alike.

A KB's documents are named to users by their *label*: an uploaded file by its name, a file indexed
from elsewhere (``ragqa index``) by its full path. An upload is written beside its final place
and renamed into it, so a reader never sees half a file; the HTTP API streams uploads into
``<data_dir>/uploads/.staging`` first and moves them in once the whole request has arrived.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ragqa.errors import DiskFull, RagqaError, is_disk_full
from ragqa.paths import atomic_file, kb_path

if TYPE_CHECKING:
    from ragqa.config import Settings

UPLOADS = "uploads"
STAGING = ".staging"  # never a KB name (they cannot start with '.')


class Uploads:
    def __init__(self, settings: "Settings") -> None:
        self.root = Path(settings.data_dir) / UPLOADS

    def folder(self, kb: str) -> Path:
        return Path(kb_path(self.root / kb))  # the name its files are kept under in the KB

    def staging_dir(self) -> Path:
        folder = self.root / STAGING
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RagqaError(f"cannot keep uploads in {self.root}: {exc.strerror or exc}") from None
        return folder

    @staticmethod
    def safe_name(name: str) -> str:
        """An upload's name as a file name in the uploads folder (never a folder, never empty)."""
        name = Path(name.replace("\\", "/")).name.strip()
        return name if name not in ("", ".", "..") else "upload"

    def keep(self, kb: str, source: Path, name: str, *, move: bool = False) -> Path:
        """The upload ``source`` as ``<kb folder>/<name>``, whole or not at all; ``move`` takes a
        staged file (same file system) instead of copying it."""
        target = self.folder(kb) / self.safe_name(name)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if move:
                os.replace(source, target)
            else:
                with atomic_file(target, binary=True) as out, open(source, "rb") as src:
                    shutil.copyfileobj(src, out, 1024 * 1024)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(f"cannot keep the upload {target.name} in {target.parent}: the disk is full") from None
            raise RagqaError(f"cannot keep the upload {target.name} in {target.parent}: {exc.strerror or exc}") from None
        return target

    def label(self, kb: str, path: str) -> str:
        """How a user names a KB's document: an upload by its file name, any other file by its path.
        An upload kept by another replica (a KB on Milvus shared by several servers) counts too."""
        return Path(path).name if self.is_upload(kb, path) else path

    def is_upload(self, kb: str, path: str) -> bool:
        parent = Path(path).parent
        return parent == self.folder(kb) or (parent.name == kb and parent.parent.name == UPLOADS)

    def discard(self, kb: str, path: str) -> None:
        """Delete the kept copy of an upload in *this* data folder (a file indexed from elsewhere is
        never touched, nor a copy under another data folder's path a moved KB still names)."""
        if self.is_upload(kb, path):
            with contextlib.suppress(OSError):
                (self.folder(kb) / Path(path).name).unlink()

    def moved(self, kb: str, paths: list[str]) -> dict[str, str]:
        """The uploads a KB names under another data folder's path (the folder was copied, moved or
        restored elsewhere) -> their path in this one."""
        here = self.folder(kb)
        return {p: str(here / Path(p).name) for p in paths
                if self.is_upload(kb, p) and Path(p).parent != here}

    def drop(self, kb: str) -> None:
        """Delete every upload kept for ``kb`` (the KB was dropped)."""
        shutil.rmtree(self.folder(kb), ignore_errors=True)
