"""The transformers backend on the CPU with a real tiny llama: the starter SmolLM2-135M GGUF,
dequantized once by transformers (``gguf_file=``) into a Hugging Face folder, cached by the GGUF's
hash under ~/.cache/ragqa/test-models (or $RAGQA_TEST_MODELS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from modelfixtures import starter_hf_folder

from ragqa.config import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HERON = ROOT / "corpora" / "en" / "heron_festival.md"
QUESTION = "When is the Zorblat festival held, and what does it celebrate?"


@pytest.fixture(scope="session")
def smollm2_hf() -> Path:
    """The starter model as a Hugging Face folder; converted on first use (~30 s), then reused."""
    pytest.importorskip("gguf", reason="converting the starter GGUF needs the gguf package (ragqa[test])")
    return starter_hf_folder()


@pytest.fixture(scope="module")
def backend(smollm2_hf: Path) -> Any:
    from ragqa.llms import load_backend

    return load_backend(Settings(model=str(smollm2_hf), temperature=0))  # auto: a folder -> transformers


def test_ask_answers_from_the_document_with_sources(run_ragqa, smollm2_hf: Path) -> None:
    proc = run_ragqa("ask", str(HERON), QUESTION, "--backend", "transformers", "--model", str(smollm2_hf),
                     "--device", "cpu", "--max-new-tokens", "60")
    answer, _, sources = proc.stdout.partition("\nSources:\n")
    assert "march" in answer.lower() or "heron" in answer.lower(), answer
    assert f"[1] {HERON}" in sources and "Quillby" in sources  # the source list, with snippets
    assert "Traceback" not in proc.stderr


def test_auto_chat_format_comes_from_the_tokenizer_template(run_ragqa, smollm2_hf: Path, backend: Any) -> None:
    fmt = backend.chat_format("auto")
    prompt = fmt.prompt("Hi?", "Be brief.")
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    assert fmt.stop == ("<|im_end|>",)
    # the same model through llama.cpp gets the very same prompt (its template is the GGUF's)
    via_transformers = run_ragqa("ask", str(HERON), QUESTION, "--model", str(smollm2_hf), "--dry-run").stdout
    via_llama_cpp = run_ragqa("ask", str(HERON), QUESTION, "--dry-run").stdout
    assert via_transformers.startswith("<|im_start|>system\n") and via_transformers == via_llama_cpp


def test_streaming_through_the_python_api(backend: Any) -> None:
    fmt = backend.chat_format("auto")
    prompt = fmt.prompt("What is the capital of France? Answer in one sentence.")
    pieces = list(backend.stream(prompt, stop=list(fmt.stop), max_tokens=30, temperature=0.0, top_k=40, top_p=0.9,
                                 repeat_penalty=1.1))
    assert len(pieces) >= 3, pieces
    assert "Paris" in "".join(pieces)
    assert "<|im_end|>" not in "".join(pieces)
    stats = backend.stats
    assert stats.prompt_tokens == backend.count_tokens(prompt) and 0 < stats.completion_tokens <= 30
