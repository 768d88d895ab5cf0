"""A full disk is a fault the server lives through: a real `ragqa serve` whose data folder is a small
tmpfs fills up in the middle of an upload job, keeps answering (507 for a new upload, the KB still
listed and asked), and once space is back finishes the job by itself, without a restart.

Mounting a tmpfs needs root: elsewhere the test is skipped with that reason."""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from netfixtures import start_ragqa_serve, stop

WORDS = ["harbour", "ferry", "wool", "slate", "apple", "river", "dawn", "keeper", "lamp", "tide", "gull", "pier"]


def document(seed: int) -> bytes:
    rnd = random.Random(seed)
    return "\n\n".join(" ".join(rnd.choice(WORDS) for _ in range(120)) for _ in range(40)).encode()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def job(api: str, job_id: str) -> dict[str, Any]:
    return httpx.get(f"{api}/jobs/{job_id}", timeout=30).json()


def test_a_disk_that_fills_mid_job_is_survived_and_the_job_finishes_once_space_is_back(small_disk: Path,
                                                                                       tmp_path: Path) -> None:
    proc, api = start_ragqa_serve(tmp_path / "srv", "--no-page", env={"RAGQA_DATA_DIR": str(small_disk / "data")})
    try:
        files = [("file", (f"log-{i:02}.md", document(i))) for i in range(12)]
        reply = httpx.post(f"{api}/kbs/logs/documents", files=files, timeout=120)
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["id"]
        while not any(f["status"] == "retrying" for f in job(api, job_id)["files"]):  # the disk filled
            assert job(api, job_id)["status"] not in ("done", "failed"), job(api, job_id)
            time.sleep(0.2)
        waiting = next(f for f in job(api, job_id)["files"] if f["status"] == "retrying")
        assert waiting["error"] == "the disk is full" or "disk is full" in waiting["error"], waiting
        # while it is full the server serves: the KBs, the documents (waiting ones too), a question
        assert httpx.get(f"{api}/kbs", timeout=30).status_code == 200
        listed = httpx.get(f"{api}/kbs/logs/documents", timeout=30)
        assert listed.status_code == 200 and {"ok", "retrying"} <= {d["status"] for d in listed.json()["data"]}
        new = httpx.post(f"{api}/kbs/logs/documents", files=[("file", ("more.md", document(99) * 20))], timeout=60)
        assert new.status_code == 507 and new.json()["error"]["code"] == "disk_full", new.text
        answer = httpx.post(f"{api}/chat/completions", timeout=300, json={
            "model": "logs", "max_tokens": 10, "abstain": "off",
            "messages": [{"role": "user", "content": "When did the ferry cross?"}]})
        assert answer.status_code == 200, answer.text
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space is back
        while (state := job(api, job_id))["status"] not in ("done", "failed"):
            time.sleep(0.2)
        assert state["status"] == "done" and all(f["status"] == "added" for f in state["files"]), [(f["name"], f["status"], f["error"]) for f in state["files"] if f["status"] != "added"]
        listed = httpx.get(f"{api}/kbs/logs/documents", timeout=30).json()["data"]
        assert sorted(d["source"] for d in listed) == [f"log-{i:02}.md" for i in range(12)]
        again = httpx.post(f"{api}/kbs/logs/documents", files=[("file", ("more.md", document(99)))], timeout=60)
        assert again.status_code == 202  # a new upload works again, no restart
        assert job_until_done(api, again.json()["id"])["status"] == "done"
    finally:
        stop(proc)
    log = Path(proc.log_path).read_text()  # type: ignore[attr-defined]
    assert "Traceback" not in log and "LockBusy" not in log


def job_until_done(api: str, job_id: str) -> dict[str, Any]:
    while (state := job(api, job_id))["status"] not in ("done", "failed"):
        time.sleep(0.2)
    return state
