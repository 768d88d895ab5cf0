"""A model server that hangs: `ragqa serve` answers within its timeout with a clean error (504, or an
error event in a stream) and frees the slot for the next question."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from netfixtures import start_ragqa_serve, stop
from standin_openai import StandIn

HERON = Path(__file__).resolve().parents[2] / "corpora" / "en" / "heron_festival.md"


def test_a_silent_model_server_is_a_504_and_the_slot_is_freed(tmp_path: Path) -> None:
    with StandIn(latency=0.1, prefill=600.0) as hung:
        proc, api = start_ragqa_serve(tmp_path / "srv", "--no-page", "--backend", "openai", "--base-url", hung.url,
                                      "--chat-format", "chatml", "--first-token-timeout", "2", "--max-concurrency", "1",
                                      "--max-queue", "0", "--abstain", "off")
        try:
            reply = httpx.post(f"{api}/kbs/f/documents", files=[("file", ("heron.md", HERON.read_bytes()))], timeout=60)
            job_id = reply.json()["id"]
            while httpx.get(f"{api}/jobs/{job_id}", timeout=30).json()["status"] not in ("done", "failed"):
                time.sleep(0.1)
            question = {"model": "f", "messages": [{"role": "user", "content": "When is the festival?"}]}
            plain = httpx.post(f"{api}/chat/completions", json=question, timeout=120)
            assert plain.status_code == 504 and plain.json()["error"]["code"] == "model_timeout"
            assert "first_token_timeout" in plain.json()["error"]["message"]
            # the one slot is free again: the next question is admitted (not 429) and times out the same way
            with httpx.stream("POST", f"{api}/chat/completions", json={**question, "stream": True}, timeout=120) as s:
                assert s.status_code == 200
                events = [json.loads(line[6:]) for line in s.iter_lines()
                          if line.startswith("data: ") and line != "data: [DONE]"]
            assert events[-1]["error"]["code"] == "model_timeout"
        finally:
            stop(proc)
        assert "Traceback" not in Path(proc.log_path).read_text()  # type: ignore[attr-defined]
