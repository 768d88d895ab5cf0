"""The durable ingest queue (ragqa.pipeline.jobs) with fakes: what it accepts is written down before
submit returns, resumed after a crash, retried when the fault passes, failed with its reason (and
no copy left) when it does not, and left queued by a graceful stop. The real server killed with
real signals is tests/integration/test_ingest_durability.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import CountingEmbeddings

import ragqa.pipeline.jobs as jobs_module
from ragqa.api.uploads import Staged
from ragqa.errors import ModelError
from ragqa.pipeline.jobs import IngestJobs

TEXTS = {"a.md": "熊猫吃竹子。", "b.md": "苍鹭在三月回来。", "c.md": "灯笼在晚上点亮。"}


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_module, "RETRY_DELAYS", (0.01, 0.01, 0.01))


def stage(pipeline: Any, names: list[str]) -> list[Staged]:
    folder = pipeline.uploads.staging_dir()
    out = []
    for i, name in enumerate(names):
        path = folder / f"{i}-{name}.part"
        path.write_text(TEXTS.get(name, "x"), "utf-8")
        out.append(Staged(name, path))
    return out


def wait_done(jobs: IngestJobs, job_id: str) -> dict[str, Any]:
    while True:  # the job reports its end (pytest's own timeout bounds a hang)
        job = jobs.get(job_id)
        assert job is not None
        if job.status in ("done", "failed"):
            return job.to_dict()
        time.sleep(0.02)


def files_in(pipeline: Any, kb: str) -> dict[str, str]:
    return {Path(r.path).name: r.status for r in pipeline.kb(kb).files()}


class Crashed(IngestJobs):
    """A server that accepts jobs and dies before working on them (no worker ever starts)."""

    def _enqueue(self, job: Any) -> None:
        return None


def test_an_accepted_upload_survives_a_crash_and_the_next_start_finishes_it(make_pipeline) -> None:
    first = make_pipeline()
    job = Crashed(first).submit("k", stage(first, ["a.md", "b.md"]))
    first.uploads.staging_dir().joinpath("orphan.part").write_text("never named by a job")
    second = make_pipeline()  # the restart: a new process over the same data folder
    jobs = IngestJobs(second)
    assert jobs.resume() == 1
    done = wait_done(jobs, job.id)
    assert done["status"] == "done" and [f["status"] for f in done["files"]] == ["added", "added"]
    assert files_in(second, "k") == {"a.md": "ok", "b.md": "ok"}
    assert list(second.uploads.staging_dir().iterdir()) == []  # adopted or swept: nothing orphaned
    assert IngestJobs(make_pipeline()).get(job.id).status == "done"  # the id answers after a restart


def test_a_file_that_was_running_at_the_crash_starts_over(make_pipeline) -> None:
    first = make_pipeline()
    crashed = Crashed(first)
    job = crashed.submit("k", stage(first, ["a.md"]))
    job.files[0].status = "running"
    crashed.store.save_file(job, 0)
    jobs = IngestJobs(make_pipeline())
    jobs.resume()
    assert wait_done(jobs, job.id)["files"][0]["status"] == "added"


class FlakyEmbeddings(CountingEmbeddings):
    """An embedding server that is down for the first ``down`` calls."""

    def __init__(self, down: int) -> None:
        super().__init__()
        self.down = down

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        from ragqa.store.base import PROBE_TEXTS

        if list(texts) != list(PROBE_TEXTS) and self.down > 0:
            self.down -= 1
            raise ModelError("the embedding server at http://127.0.0.1:9/v1 cannot be reached; is it running?")
        return super().embed_documents(texts)


def test_a_passing_fault_is_retried_until_the_file_is_in(make_pipeline) -> None:
    pipeline = make_pipeline(embeddings=FlakyEmbeddings(down=2))
    jobs = IngestJobs(pipeline)
    done = wait_done(jobs, jobs.submit("k", stage(pipeline, ["a.md"])).id)
    assert done["status"] == "done" and done["files"][0]["status"] == "added" and done["files"][0]["tries"] == 2
    assert files_in(pipeline, "k") == {"a.md": "ok"}


def test_a_fault_that_never_passes_fails_the_file_with_its_reason_and_keeps_no_copy(make_pipeline, data_dir: Path) -> None:
    pipeline = make_pipeline(embeddings=FlakyEmbeddings(down=100))
    jobs = IngestJobs(pipeline)
    done = wait_done(jobs, jobs.submit("k", stage(pipeline, ["a.md"])).id)
    [f] = done["files"]
    assert done["status"] == "failed" and f["status"] == "failed"
    assert "cannot be reached" in f["error"] and "tried 4 times" in f["error"]
    assert not [p for p in (data_dir / "uploads").rglob("*") if p.is_file()]
    assert jobs.open_uploads("k") == [{"source": "a.md", "status": "failed", "error": f["error"], "tries": 3}]


def test_an_unreadable_file_fails_alone_and_its_copy_goes(make_pipeline, data_dir: Path) -> None:
    pipeline = make_pipeline()
    staged = stage(pipeline, ["a.md", "empty.txt"])
    staged[1].path.write_bytes(b"")
    jobs = IngestJobs(pipeline)
    done = wait_done(jobs, jobs.submit("k", staged).id)
    assert done["status"] == "done"
    assert [(f["name"], f["status"]) for f in done["files"]] == [("a.md", "added"), ("empty.txt", "failed")]
    assert files_in(pipeline, "k") == {"a.md": "ok"}  # no record of the failed read in the KB: the job tells it
    assert sorted(p.name for p in (data_dir / "uploads").rglob("*") if p.is_file()) == ["a.md"]


class SlowEmbeddings(CountingEmbeddings):
    """Blocks the first real embedding until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.started, self.release = threading.Event(), threading.Event()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        from ragqa.store.base import PROBE_TEXTS

        if list(texts) != list(PROBE_TEXTS):
            self.started.set()
            self.release.wait()
        return super().embed_documents(texts)


def test_a_graceful_stop_finishes_the_file_in_progress_and_leaves_the_rest_queued(make_pipeline) -> None:
    slow = SlowEmbeddings()
    pipeline = make_pipeline(embeddings=slow)
    jobs = IngestJobs(pipeline)
    job = jobs.submit("k", stage(pipeline, ["a.md", "b.md", "c.md"]))
    assert slow.started.wait(30)
    stopper = threading.Thread(target=jobs.stop, kwargs={"timeout": 30})
    stopper.start()
    slow.release.set()
    stopper.join(60)
    assert not stopper.is_alive()
    left = jobs.store.load(job.id)
    assert [f.status for f in left.files] == ["added", "queued", "queued"] and left.finished is None
    with pytest.raises(Exception, match="shutting down"):
        jobs.submit("k", stage(pipeline, ["a.md"]))
    again = IngestJobs(make_pipeline())
    again.resume()
    assert [f["status"] for f in wait_done(again, job.id)["files"]] == ["added", "added", "added"]


def test_a_copied_data_folder_keeps_working_and_never_touches_the_original(make_pipeline, make_settings,
                                                                         data_dir: Path, tmp_path: Path) -> None:
    import shutil

    from ragqa.pipeline import Pipeline

    original = make_pipeline()
    jobs = IngestJobs(original)
    assert wait_done(jobs, jobs.submit("k", stage(original, ["a.md", "b.md"])).id)["status"] == "done"
    jobs.store.close()
    original.forget_kb("k")
    copy_dir = tmp_path / "copy"
    shutil.copytree(data_dir, copy_dir)
    copy = Pipeline(make_settings(data_dir=copy_dir))
    copy._embeddings = original.embeddings
    assert copy.remove_document("k", "a.md")
    assert not (copy_dir / "uploads" / "k" / "a.md").exists()
    assert (data_dir / "uploads" / "k" / "a.md").exists()  # the original's copy is untouched
    again = IngestJobs(copy)
    done = wait_done(again, again.submit("k", stage(copy, ["b.md"])).id)
    assert done["files"][0]["status"] == "unchanged"  # the same file, not a second document
    assert [(Path(r.path).parent, Path(r.path).name) for r in copy.kb("k").files()] == [(copy_dir / "uploads" / "k",
                                                                                            "b.md")]


class SecondBatchWaits(CountingEmbeddings):
    """Blocks on the second batch of a file's chunks until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0
        self.blocked, self.release = threading.Event(), threading.Event()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        from ragqa.store.base import PROBE_TEXTS

        if list(texts) != list(PROBE_TEXTS):
            self.batches += 1
            if self.batches == 2:
                self.blocked.set()
                self.release.wait()
        return super().embed_documents(texts)


def test_a_running_file_shows_its_progress(make_pipeline) -> None:
    slow = SecondBatchWaits()
    pipeline = make_pipeline(embeddings=slow)
    staged = stage(pipeline, ["long.md"])
    staged[0].path.write_text("\n\n".join(f"第{i}段。" + "熊猫吃竹子，住在四川的山里。" * 30 for i in range(80)), "utf-8")
    jobs = IngestJobs(pipeline)
    job = jobs.submit("k", staged)
    assert slow.blocked.wait(30)
    [running] = jobs.get(job.id).to_dict()["files"]
    done, total = running["progress"]["chunks"]
    assert running["status"] == "running" and done == 32 and total > 32
    slow.release.set()
    assert "progress" not in wait_done(jobs, job.id)["files"][0]
