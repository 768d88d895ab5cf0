#!/usr/bin/env python3
"""Each ragqa backend side by side with the raw library it wraps: same model, prompt, greedy decoding.

| backend | raw library call | ragqa call |
|---|---|---|
| llama.cpp | ``Llama.create_completion(stream=True)`` | ``LlamaCppBackend.stream`` |
| transformers | ``model.generate`` + ``TextIteratorStreamer`` in a thread | ``TransformersBackend.stream`` |
| openai | ``openai.OpenAI().completions.create(stream=True)`` | ``OpenAIBackend.stream`` |

The model is the starter SmolLM2-135M-Instruct everywhere: the GGUF for llama.cpp and for
llama-cpp-python's server (openai), and the same weights dequantized to a float32 HF folder for
transformers (the folder the integration tests build, ~/.cache/ragqa/test-models). The prompt is
the ChatML-wrapped QA prompt for the sample document. Each pair runs alternately ``--repeats``
times; reported: time to first token and decode tokens/s ((pieces - 1) / (t_last - t_first)), the
median, and ragqa / raw ratios. Nothing asserts on timings.

    .venv/bin/python bench/bench_backends.py [--repeats 3] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from bench_web import free_port  # bench/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "corpora" / "en" / "heron_festival.md"
QUESTION = "When is the Zorblat festival held, and what does it celebrate?"


def progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def timed(pieces: Iterator[str]) -> tuple[float, float, int, str]:
    """-> (seconds to first piece, decode pieces/s, pieces, text)."""
    t0 = time.perf_counter()
    first = last = None
    n = 0
    text = []
    for piece in pieces:
        now = time.perf_counter()
        if not piece:
            continue
        first = first or now
        last = now
        n += 1
        text.append(piece)
    if first is None:
        return float("nan"), 0.0, 0, ""
    rate = (n - 1) / (last - first) if n > 1 and last > first else 0.0
    return first - t0, rate, n, "".join(text)


def hf_folder() -> Path:
    """The float32 HF folder the integration tests use (tests/modelfixtures.py builds it once)."""
    sys.path.insert(0, str(REPO / "tests"))
    from modelfixtures import starter_hf_folder

    return starter_hf_folder(progress)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=96)
    args = ap.parse_args()

    from ragqa.chat_formats import get_chat_format
    from ragqa.config import Settings
    from ragqa.llms import load_backend
    from ragqa.llms.llamacpp import _physical_cores
    from ragqa.models import resolve_llm_path
    from ragqa.prompts import fill_prompt

    threads = _physical_cores()
    gguf = resolve_llm_path("smollm2")
    fmt = get_chat_format("chatml")
    prompt = fmt.prompt(fill_prompt("qa_stuff", "en", context="[1] " + DOC.read_text(encoding="utf-8"), question=QUESTION))
    stop = list(fmt.stop)
    n = args.max_tokens
    params = dict(max_tokens=n, temperature=0.0, top_k=40, top_p=0.9, repeat_penalty=1.0)
    pairs: list[tuple[str, Callable[[], Iterator[str]], Callable[[], Iterator[str]]]] = []

    # -- llama.cpp
    from llama_cpp import Llama

    raw_llama = Llama(model_path=str(gguf), n_ctx=4096, n_threads=threads, n_batch=512, seed=42, verbose=False)

    def raw_llama_stream() -> Iterator[str]:
        raw_llama.reset()
        for part in raw_llama.create_completion(prompt, stop=stop, stream=True, **params):
            yield part["choices"][0]["text"]

    rq_llama = load_backend(Settings(model="smollm2", n_threads=threads), backend="llama.cpp")
    pairs.append(("llama.cpp", raw_llama_stream, lambda: rq_llama.stream(prompt, stop=stop, **params)))

    # -- transformers
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    torch.set_num_threads(threads)
    folder = hf_folder()
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)

    def raw_hf_stream() -> Iterator[str]:
        inputs = tok(prompt, return_tensors="pt")
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(**inputs, max_new_tokens=n, do_sample=False, streamer=streamer,
                      stop_strings=stop, tokenizer=tok)
        thread = threading.Thread(target=model.generate, kwargs=kwargs)
        thread.start()
        yield from streamer
        thread.join()

    rq_hf = load_backend(Settings(model=str(folder), backend="transformers", device="cpu", torch_dtype="float32"),
                         backend="transformers")
    pairs.append(("transformers", raw_hf_stream, lambda: rq_hf.stream(prompt, stop=stop, **params)))

    # -- openai (llama-cpp-python's server)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", str(threads)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/models", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        import openai

        client = openai.OpenAI(base_url=url, api_key="none")

        def raw_openai_stream() -> Iterator[str]:
            for chunk in client.completions.create(model="smollm2", prompt=prompt, max_tokens=n, temperature=0.0,
                                                   top_p=0.9, stop=stop, stream=True,
                                                   extra_body={"top_k": 40, "repeat_penalty": 1.0}):
                yield chunk.choices[0].text

        rq_openai = load_backend(Settings(base_url=url, api_model="smollm2", n_ctx=4096), backend="openai")
        pairs.append(("openai", raw_openai_stream, lambda: rq_openai.stream(prompt, stop=stop, **params)))

        rows = []
        for name, raw, ours in pairs:
            progress(f"{name}: warm-up")
            timed(raw())
            timed(ours())
            results: dict[str, list[tuple[float, float, int, str]]] = {"raw": [], "ragqa": []}
            for r in range(args.repeats):
                progress(f"{name}: round {r + 1}/{args.repeats}")
                results["raw"].append(timed(raw()))
                results["ragqa"].append(timed(ours()))
            med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v), v[-1][2])
                   for k, v in results.items()}
            same = results["raw"][-1][3].strip() == results["ragqa"][-1][3].strip()
            rows.append((name, med, same))
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(f"SmolLM2-135M-Instruct, {threads} threads, greedy, up to {n} tokens, median of {args.repeats}\n")
    print("| backend | raw: first token s | raw: tok/s | ragqa: first token s | ragqa: tok/s | ragqa / raw tok/s | same text |")
    print("|---|---|---|---|---|---|---|")
    for name, med, same in rows:
        ratio = med["ragqa"][1] / med["raw"][1] if med["raw"][1] else float("nan")
        print(f"| {name} | {med['raw'][0]:.3f} | {med['raw'][1]:.1f} | {med['ragqa'][0]:.3f} | "
              f"{med['ragqa'][1]:.1f} | {ratio:.2f}x | {'yes' if same else 'no'} |")


if __name__ == "__main__":
    main()
