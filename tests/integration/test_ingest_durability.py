"""What the server accepts, it keeps: a real `ragqa serve` killed with real signals in the middle of
multi-file uploads, then started again on the same data folder. Every accepted file ends in the KB
(or failed with a reason), the job ids answer after the restart, and nothing is left in the
uploads or staging folders that the KB and `GET /documents` do not account for."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from netfixtures import start_ragqa_serve, stop

PARAGRAPH = ("The harbour master of Quillby wrote in log {i} that the ferry {j} crossed the Ember River "
             "at dawn, carrying {k} passengers and a cargo of wool, slate and apples from the hill farms. ")


def document(i: int) -> bytes:
    return "\n\n".join(PARAGRAPH.format(i=i, j=j, k=i * 10 + j) * 3 for j in range(6)).encode()


def upload(api: str, kb: str, first: int, count: int) -> str:
    files = [("file", (f"log-{i:02}.md", document(i))) for i in range(first, first + count)]
    reply = httpx.post(f"{api}/kbs/{kb}/documents", files=files, timeout=120)
    assert reply.status_code == 202, reply.text
    return reply.json()["id"]


def job(api: str, job_id: str) -> dict[str, Any]:
    reply = httpx.get(f"{api}/jobs/{job_id}", timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


def wait(api: str, job_id: str, condition: Any) -> dict[str, Any]:
    while True:  # the job reports its progress; pytest's own timeout bounds a hang
        state = job(api, job_id)
        if condition(state):
            return state
        time.sleep(0.1)


def uploads_on_disk(folder: Path, kb: str) -> list[str]:
    return sorted(p.name for p in (folder / "data" / "uploads" / kb).glob("*") if p.is_file())


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_server_stopped_mid_upload_finishes_every_accepted_file_after_a_restart(tmp_path: Path, sig: int) -> None:
    folder = tmp_path / "srv"
    proc, api = start_ragqa_serve(folder, "--no-page")
    try:
        first = upload(api, "logs", 0, 10)
        second = upload(api, "logs", 10, 10)
        wait(api, first, lambda s: s["progress"]["files_done"] >= 2)  # mid-way through the first job
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
        assert code in ((0, -signal.SIGTERM) if sig == signal.SIGTERM else (-signal.SIGKILL,)), code
        if sig == signal.SIGTERM:  # a graceful stop finished the file it was on and left the rest queued
            log = Path(proc.log_path).read_text()  # type: ignore[attr-defined]
            assert "Traceback" not in log
    finally:
        stop(proc)
    proc, api = start_ragqa_serve(folder, "--no-page")
    try:
        for job_id in (first, second):  # the ids answer after the restart, and the jobs finish
            done = wait(api, job_id, lambda s: s["status"] in ("done", "failed"))
            assert done["status"] == "done", done
            assert all(f["status"] in ("added", "unchanged") for f in done["files"]), done["files"]
        listed = httpx.get(f"{api}/kbs/logs/documents", timeout=30).json()["data"]
        names = [f"log-{i:02}.md" for i in range(20)]
        assert sorted(d["source"] for d in listed) == names and all(d["status"] == "ok" for d in listed)
        assert uploads_on_disk(folder, "logs") == names  # no orphan copies
        staging = folder / "data" / "uploads" / ".staging"
        assert not staging.exists() or list(staging.iterdir()) == []
        log = Path(proc.log_path).read_text()  # type: ignore[attr-defined]
        assert "resuming" in log and "Traceback" not in log
    finally:
        stop(proc)
