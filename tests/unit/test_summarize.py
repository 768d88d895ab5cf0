"""Summarization chains and the resumable batch, with fake LLMs (no model weights)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from langchain_core.language_models import FakeListLLM

from ragqa.chains import PromptBuilder, make_summarize_chain, summarize_chunks
from ragqa.chat_formats import get_chat_format
from ragqa.errors import InputError

HERE = Path(__file__).resolve().parent


class RecordingLLM(FakeListLLM):
    """FakeListLLM that keeps the prompts it was given."""

    prompts: list[str] = []

    def _call(self, prompt: str, *args, **kwargs) -> str:  # type: ignore[override]
        self.prompts.append(prompt)
        return super()._call(prompt, *args, **kwargs)


def builder(budget: int) -> PromptBuilder:
    return PromptBuilder(get_chat_format("chatml"), len, budget)


def llm(n: int = 200) -> RecordingLLM:
    return RecordingLLM(responses=[f"摘要{i}" for i in range(n)], prompts=[])


def test_auto_stuffs_a_document_that_fits() -> None:
    fake = llm()
    result = summarize_chunks(fake, ["短文。", "第二段。"], builder(1000), "auto", "zh")
    assert (result.chain, result.llm_calls) == ("stuff", 1)
    assert "短文。" in fake.prompts[0] and "第二段。" in fake.prompts[0]


def test_auto_falls_back_to_map_reduce_when_the_document_does_not_fit() -> None:
    fake = llm()
    chunks = ["甲" * 150, "乙" * 150, "丙" * 150]
    result = summarize_chunks(fake, chunks, builder(400), "auto", "zh")
    assert result.chain == "map_reduce"
    assert result.llm_calls == 4  # 3 maps + 1 reduce
    assert result.summary == "摘要3"
    assert all(len(p) <= 400 for p in fake.prompts)
    assert "摘要0" in fake.prompts[-1] and "摘要2" in fake.prompts[-1]  # the reduce sees every map summary


def test_map_reduce_recurses_until_the_summaries_fit_one_prompt() -> None:
    fake = RecordingLLM(responses=["概" * 40], prompts=[])  # every summary is 40 characters
    chunks = ["字" * 150 for _ in range(12)]
    result = summarize_chunks(fake, chunks, builder(260), "map_reduce", "zh")
    reduces = [p for p in fake.prompts if "各个部分的摘要" in p]
    assert result.chain == "map_reduce"
    assert len(reduces) >= 3  # 12 summaries do not fit one reduce prompt: at least two levels
    assert result.llm_calls == 12 + len(reduces)
    assert all(len(p) <= 260 for p in fake.prompts)


def test_refine_improves_one_summary_chunk_by_chunk() -> None:
    fake = llm()
    result = summarize_chunks(fake, ["第一段。", "第二段。", "第三段。"], builder(1000), "refine", "zh")
    assert (result.chain, result.llm_calls, result.summary) == ("refine", 3, "摘要2")
    assert "摘要0" in fake.prompts[1] and "第二段。" in fake.prompts[1]  # existing summary + next chunk
    assert "摘要1" in fake.prompts[2] and "第三段。" in fake.prompts[2]


def test_english_documents_get_english_instructions() -> None:
    fake = llm()
    make_summarize_chain(fake, builder(2000)).invoke({"chunks": ["The ferry runs every forty minutes."]})
    assert "Write a concise summary" in fake.prompts[0]


def test_empty_document_and_unknown_chain_are_errors() -> None:
    with pytest.raises(InputError, match="no text"):
        summarize_chunks(llm(), ["  "], builder(100), "auto", "zh")
    with pytest.raises(InputError, match="map_reduce"):
        summarize_chunks(llm(), ["a"], builder(100), "tree", "zh")


# -- the batch -----------------------------------------------------------------------------------

@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(3):
        (folder / f"doc{i}.txt").write_text(f"第{i}篇文章。熊猫吃竹子。" * 5, "utf-8")
    (folder / "empty.txt").write_text("", "utf-8")
    return folder


def test_batch_writes_jsonl_resumes_and_forces(make_pipeline, fake_backend_cls, docs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    backend = fake_backend_cls(["一段 摘要。"])
    report = make_pipeline(backend=backend).summarize_batch([docs], out, progress=False)
    assert (report.summarized, report.skipped, report.failed) == (3, 0, 1)
    records = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert {Path(r["source"]).name for r in records} == {"doc0.txt", "doc1.txt", "doc2.txt", "empty.txt"}
    ok = [r for r in records if r["status"] == "ok"]
    assert all(r["summary"] == "一段 摘要。" and r["chain"] == "stuff" and r["chunks"] == 1 for r in ok)
    [bad] = [r for r in records if r["status"] == "failed"]
    assert "empty" in bad["error"]

    again = make_pipeline(backend=fake_backend_cls()).summarize_batch([docs], out, progress=False)
    assert (again.summarized, again.skipped, again.failed) == (0, 3, 1)

    (docs / "doc1.txt").write_text("改过的文章。", "utf-8")  # changed content is redone
    changed = make_pipeline(backend=fake_backend_cls()).summarize_batch([docs], out, progress=False)
    assert (changed.summarized, changed.skipped) == (1, 2)

    forced = make_pipeline(backend=fake_backend_cls()).summarize_batch([docs], out, force=True, progress=False)
    assert forced.summarized == 3
    assert len(out.read_text("utf-8").splitlines()) == 4  # one line per document, never duplicated


def test_other_settings_redo_the_summaries(make_pipeline, docs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    make_pipeline().summarize_batch([docs / "doc0.txt"], out, progress=False)
    report = make_pipeline(max_new_tokens=100).summarize_batch([docs / "doc0.txt"], out, progress=False)
    assert report.summarized == 1


def test_markdown_folder_output(make_pipeline, fake_backend_cls, docs: Path, tmp_path: Path) -> None:
    out = tmp_path / "summaries"
    make_pipeline(backend=fake_backend_cls(["要点 一。"])).summarize_batch([docs], out, progress=False)
    assert (out / "doc0.md").read_text("utf-8").startswith("# doc0.txt\n\n要点 一。")
    index = (out / "index.md").read_text("utf-8")
    assert "[doc2.txt](doc2.md)" in index and "| empty.txt | failed |" in index
    assert not list(out.glob(".*tmp"))  # no temporary files left behind


def test_long_document_is_split_to_fit_the_model(make_pipeline, fake_backend_cls, tmp_path: Path) -> None:
    doc = tmp_path / "long.txt"
    doc.write_text("这是一个很长的句子，用来测试摘要的分块。" * 200, "utf-8")  # 4,000 characters
    backend = fake_backend_cls(["摘要。"], n_ctx=1500)
    record = make_pipeline(backend=backend, n_ctx=1500, max_new_tokens=200).summarize_file(doc)
    assert record["chain"] == "map_reduce" and record["chunks"] > 1
    assert all(backend.count_tokens(c["prompt"]) <= 1500 - 200 for c in backend.calls)


LAUNCHER = f"""
import sys, time
sys.path.insert(0, {str(HERE)!r})
import ragqa.llms
from conftest import FakeBackend

class SlowBackend(FakeBackend):
    def stream(self, prompt, stop=None, **params):
        time.sleep(0.4)
        yield from super().stream(prompt, stop, **params)

ragqa.llms.load_backend = lambda settings, **k: SlowBackend(["慢慢 写 的 摘要。"])
from ragqa.cli import main
sys.argv = ["ragqa", *sys.argv[1:]]
main()
"""


def test_kill_9_mid_batch_loses_nothing_and_resume_skips_finished(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(12):
        (folder / f"d{i:02}.txt").write_text(f"第{i}篇。内容。", "utf-8")
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "RAGQA_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-c", LAUNCHER, "summarize", str(folder), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        if out.exists() and len(out.read_text("utf-8").splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines = out.read_text("utf-8").splitlines()
    assert 3 <= len(lines) < 12, "the kill should land mid-batch"
    done = {json.loads(line)["source"] for line in lines}  # every line is a whole record

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    skipped = [line for line in rerun.stderr.splitlines() if line.startswith("skipped")]
    assert len(skipped) == len(done)
    records = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert len(records) == 12 and all(r["status"] == "ok" for r in records)
    assert "summarized" in rerun.stderr.splitlines()[-1]


def test_parallel_keeps_n_documents_in_flight_on_a_server_backend(make_settings, tmp_path: Path) -> None:
    """--parallel 4 against a stand-in OpenAI server (tests/standin_openai.py, 0.5 s per answer):
    four summaries are generated at once, every record is written whole, and a rerun skips them all."""
    from standin_openai import StandIn

    from ragqa.pipeline import Pipeline

    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(8):
        (folder / f"d{i}.txt").write_text(f"第{i}篇。今天的内容是第{i}件事。", "utf-8")
    out = tmp_path / "out.jsonl"
    with StandIn(latency=0.5, answer="一篇 摘要。") as server:
        settings = make_settings(backend="openai", base_url=server.url, chat_format="chatml")
        report = Pipeline(settings).summarize_batch([folder], out, progress=False, parallel=4)
        assert (report.summarized, report.failed) == (8, 0)
        assert server.peak == 4
        records = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
        assert sorted(Path(r["source"]).name for r in records) == [f"d{i}.txt" for i in range(8)]
        assert all(r["status"] == "ok" and r["summary"] == "一篇 摘要。" for r in records)
        again = Pipeline(settings).summarize_batch([folder], out, progress=False, parallel=4)
        assert (again.summarized, again.skipped) == (0, 8)
