"""A multipart upload, streamed part by part into the KB's staging folder, with the size limit
enforced while it arrives: a file over ``max_file_mb`` is refused (413) before any of it is kept,
and a request that fails half-way leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragqa.api.errors import ApiError, bad_request
from ragqa.errors import DiskFull, RagqaError, is_disk_full

if TYPE_CHECKING:
    from fastapi import Request

    from ragqa.pipeline.uploads import Uploads

MAX_FILES = 100  # file parts in one request
MAX_FIELD_BYTES = 64 * 1024


@dataclass
class Staged:
    """One received file: its name as sent (made safe) and where its bytes wait."""

    name: str
    path: Path


async def receive_files(request: "Request", uploads: "Uploads", max_file_mb: float) -> list[Staged]:
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise bad_request("send the documents as multipart/form-data with one `file` part per document "
                          "(curl -F file=@report.pdf)")
    limit = int(max_file_mb * 1024 * 1024)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit * MAX_FILES:
        raise _too_large(max_file_mb)
    staging = uploads.staging_dir()
    staged: list[Staged] = []
    state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "out": None, "size": 0, "name": None,
                             "error": None}

    def on_part_begin() -> None:
        state.update(headers={}, out=None, size=0, name=None)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(state["headers"].get(b"content-disposition", b""))
        field = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        if field != "file" or filename is None:
            return  # other fields (e.g. "purpose" from OpenAI's client) are read and ignored
        if len(staged) >= MAX_FILES:
            state["error"] = bad_request(f"at most {MAX_FILES} files per upload")
            return
        name = uploads.safe_name(Path(filename.decode("utf-8", "replace").replace("\\", "/")).name)
        fd, tmp = _temp_in(staging, name)
        state.update(out=os.fdopen(fd, "wb"), name=name)
        staged.append(Staged(name, Path(tmp)))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        out = state["out"]
        if out is None or state["error"] is not None:
            return
        state["size"] += end - start
        if state["size"] > limit:
            state["error"] = _too_large(max_file_mb, state["name"])
            return
        out.write(data[start:end])

    def on_part_end() -> None:
        if state["out"] is not None:
            state["out"].close()
            state["out"] = None

    parser = MultipartParser(options[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    })
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if state["error"] is not None:
                raise state["error"]
        parser.finalize()
        if state["error"] is not None:
            raise state["error"]
    except BaseException as exc:
        if state["out"] is not None:
            state["out"].close()
        for s in staged:
            with contextlib.suppress(OSError):
                s.path.unlink()
        if isinstance(exc, ApiError):
            raise
        if isinstance(exc, OSError):  # the server's disk, not the client's body
            if is_disk_full(exc):
                raise DiskFull(f"the server's disk is full: the upload was not kept ({uploads.root})") from None
            raise RagqaError(f"cannot keep uploads in {uploads.root}: {exc.strerror or exc}") from None
        if isinstance(exc, Exception):
            raise bad_request(f"the multipart body could not be read ({exc})") from None
        raise
    if not staged:
        raise bad_request("no `file` part in the upload (curl -F file=@report.pdf)", "file")
    return staged


def _too_large(max_file_mb: float, name: str | None = None) -> ApiError:
    what = f"{name} is" if name else "the upload is"
    return ApiError(413, f"{what} over the {max_file_mb:g} MB limit (max_file_mb); nothing was kept",
                    code="file_too_large")


def _temp_in(folder: Path, name: str) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(prefix=f".{name[:60]}.", suffix=".part", dir=folder)
