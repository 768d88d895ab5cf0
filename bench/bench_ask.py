#!/usr/bin/env python3
"""Benchmark ``ragqa ask``: cold vs cached index, and decode speed against raw llama-cpp-python.

One run measures:

1. Cold vs cached ask. ``ragqa ask --json`` runs as a subprocess twice on the same document
   with the same question and a fresh, temporary cache dir: the first run builds the index, the
   second reads it from the cache. Reported per run: wall seconds of the whole process,
   ``timings.index_s`` and ``timings.files_cached``; then cold/cached ratios. The main document
   is Chinese text made of the first ``--paragraphs`` contexts of CMRC 2018 (trial set), or
   ``--doc PATH``; ``corpora/en/heron_festival.md`` (small) runs too, for reference.
2. Decode speed on the same GGUF with the same prompt, threads and sampling parameters:
   raw ``llama_cpp.Llama.create_completion(stream=True)`` vs ragqa's own backend
   (``LlamaCppBackend.stream``, in this process), timed first -> last streamed chunk exactly as
   ragqa does: (chunks - 1) / (t_last - t_first). The prompt is the one ``ragqa ask --dry-run``
   prints. The end-to-end CLI figure (``timings.decode_tokens_per_s`` of ``ragqa ask --json``)
   is reported next to them.
3. Machine facts: CPU, cores, threads, llama-cpp-python version, model file.

Progress goes to stderr, tables to stdout. Nothing here asserts on timings.

    .venv/bin/python bench/bench_ask.py [--markdown] [--json-out FILE] [--repeats 3] ...
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ZH = REPO / ".." / "shared" / "eval" / "zh_mrc" / "cmrc2018_trial.squad.json"
SMALL_DOC = REPO / "corpora" / "en" / "heron_festival.md"
SMALL_QUESTION = "When is the Zorblat festival held, and what does it celebrate?"
MODEL_NAME = "smollm2"
# Fixed by the brief; ragqa's defaults too, but set explicitly on every path.
TOP_K, TOP_P, REPEAT_PENALTY = 40, 0.9, 1.1
N_CTX, N_BATCH = 4096, 512


class BenchError(Exception):
    pass


def progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- machine facts
def physical_cores() -> int:
    """Same rule as ragqa's default thread count: distinct (physical id, core id) pairs."""
    cores = set()
    try:
        phys = None
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("physical id"):
                    phys = line.split(":", 1)[1].strip()
                elif line.startswith("core id"):
                    cores.add((phys, line.split(":", 1)[1].strip()))
    except OSError:
        pass
    return len(cores) or max(1, os.cpu_count() or 1)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _busy_ticks() -> int | None:
    """System-wide busy CPU time (all CPUs) in clock ticks, from /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(f[:8]) - f[3] - f[4]  # user..steal minus idle and iowait


class CpuMeter:
    """How much CPU *other* processes used while we measured something.

    other = system-wide busy CPU time - our own CPU time (this process, or the children it
    waited for); ``other_cpu_pct`` is that as a share of all CPUs over the wall time. On a quiet
    machine it stays near 0; a high value means the timing was taken while something else ran.
    """

    def __init__(self, children: bool) -> None:
        self.who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF

    def _own(self) -> float:
        r = resource.getrusage(self.who)
        return r.ru_utime + r.ru_stime

    def __enter__(self) -> "CpuMeter":
        self.busy0, self.own0, self.t0 = _busy_ticks(), self._own(), time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self.t0
        self.own_cpu_s = self._own() - self.own0
        busy1 = _busy_ticks()
        if self.busy0 is None or busy1 is None or self.wall <= 0:
            self.other_cpu_pct = None
            return
        busy_s = (busy1 - self.busy0) / os.sysconf("SC_CLK_TCK")
        other = max(0.0, busy_s - self.own_cpu_s)
        self.other_cpu_pct = round(100 * other / (self.wall * (os.cpu_count() or 1)), 1)


def machine_facts(threads: int, model_path: Path) -> dict[str, Any]:
    import llama_cpp

    try:
        sysinfo = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
    except Exception:  # not essential
        sysinfo = ""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "physical_cores": physical_cores(),
        "threads": threads,
        "python": platform.python_version(),
        "llama_cpp_python": getattr(llama_cpp, "__version__", "unknown"),
        "llama_cpp_system_info": sysinfo,
        "model_file": model_path.name,
        "model_mb": round(model_path.stat().st_size / 2**20, 1),
        "loadavg_start": loadavg(),
    }


# ----------------------------------------------------------------------------- inputs
def build_zh_corpus(squad_json: Path, paragraphs: int, out_dir: Path) -> tuple[Path, str, int]:
    """First N SQuAD contexts joined by blank lines -> (txt path, first question, N used)."""
    if not squad_json.is_file():
        raise BenchError(
            f"the default corpus {squad_json} is missing; give a document with --doc PATH "
            "(and a --question)"
        )
    data = json.loads(squad_json.read_text(encoding="utf-8"))
    paras = [p for article in data.get("data", []) for p in article.get("paragraphs", [])]
    if not paras:
        raise BenchError(f"{squad_json}: no data[].paragraphs[] found (SQuAD format expected)")
    used = paras[: max(1, paragraphs)]
    if len(used) < paragraphs:
        progress(f"only {len(used)} paragraphs available (asked for {paragraphs})")
    question = next((q["question"] for p in used for q in p.get("qas", []) if q.get("question")), "")
    path = out_dir / f"cmrc2018_trial_first{len(used)}.txt"
    path.write_text("\n\n".join(p["context"].strip() for p in used) + "\n", encoding="utf-8")
    return path, question or "这段文字主要讲了什么？", len(used)


def ragqa_command() -> list[str]:
    exe = Path(sys.executable).parent / "ragqa"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ragqa"]


def clean_env() -> dict[str, str]:
    """The environment for ragqa subprocesses, without RAGQA_* overrides (flags say it all)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class Gen:
    """The generation settings shared by every path."""

    def __init__(self, args: argparse.Namespace, threads: int) -> None:
        self.threads = threads
        self.temperature = args.temperature
        self.seed = args.seed
        self.max_new_tokens = args.max_new_tokens

    def cli_flags(self) -> list[str]:
        return [
            "--model", MODEL_NAME, "--n-ctx", str(N_CTX), "--threads", str(self.threads),
            "--temperature", str(self.temperature), "--top-k", str(TOP_K), "--top-p", str(TOP_P),
            "--repeat-penalty", str(REPEAT_PENALTY), "--seed", str(self.seed),
            "--max-new-tokens", str(self.max_new_tokens),
        ]


def run_ask(doc: Path, question: str, gen: Gen, cache_dir: Path, *, dry_run: bool = False) -> dict[str, Any]:
    cmd = ragqa_command() + ["ask", str(doc), question, *gen.cli_flags(), "--cache-dir", str(cache_dir)]
    cmd.append("--dry-run" if dry_run else "--json")
    with CpuMeter(children=True) as meter:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), cwd=REPO)
    wall = meter.wall
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise BenchError(f"ragqa ask exited {proc.returncode}: {' '.join(cmd)}\n{tail}")
    if dry_run:
        if not proc.stdout.endswith("\n"):
            raise BenchError("ragqa ask --dry-run: expected the prompt followed by a newline on stdout")
        return {"prompt": proc.stdout[:-1], "wall_s": wall}
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise BenchError(f"ragqa ask --json printed no JSON ({exc}): {proc.stdout[:300]!r}") from None
    t = out.get("timings", {})
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(meter.own_cpu_s, 2),
        "other_cpu_pct": meter.other_cpu_pct,
        "index_s": t.get("index_s"),
        "files": t.get("files"),
        "files_cached": t.get("files_cached"),
        "chunks": t.get("chunks"),
        "embedding_load_s": t.get("embedding_load_s"),
        "llm_load_s": t.get("llm_load_s"),
        "answer_s": t.get("answer_s"),
        "prompt_tokens": t.get("prompt_tokens"),
        "completion_tokens": t.get("completion_tokens"),
        "prompt_s": t.get("prompt_s"),
        "decode_s": t.get("decode_s"),
        "decode_tokens_per_s": t.get("decode_tokens_per_s"),
        "answer": out.get("answer", ""),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


# ----------------------------------------------------------------------------- part 1
def cold_vs_cached(label: str, doc: Path, question: str, gen: Gen, cache_dir: Path) -> dict[str, Any]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    runs = {}
    for kind in ("cold", "cached"):
        progress(f"{label}: ragqa ask --json ({kind}) on {doc.name} ...")
        r = run_ask(doc, question, gen, cache_dir)
        progress(
            f"  wall {r['wall_s']:.2f}s, index_s {r['index_s']}, files_cached {r['files_cached']}/{r['files']}, "
            f"chunks {r['chunks']}, decode {r['decode_tokens_per_s']} tok/s, other CPU {r['other_cpu_pct']}%"
        )
        runs[kind] = r
    if runs["cold"]["files_cached"] != 0 or runs["cached"]["files_cached"] != runs["cached"]["files"]:
        progress(f"WARNING {label}: expected files_cached 0 then {runs['cached']['files']}; the cache did not behave as expected")
    cold = runs["cold"]
    # A cold run loads the embedding model inside indexing (to embed the chunks); a cached run
    # loads it afterwards (to embed the question), outside index_s. Report both views.
    cold_index_net = None
    if cold["index_s"] is not None and cold["embedding_load_s"] is not None:
        cold_index_net = round(cold["index_s"] - cold["embedding_load_s"], 3)
    return {
        "label": label,
        "doc": str(doc),
        "doc_chars": len(doc.read_text(encoding="utf-8", errors="ignore")),
        "question": question,
        "cache_dir": str(cache_dir),
        "cold": runs["cold"],
        "cached": runs["cached"],
        "index_ratio_cold_over_cached": ratio(runs["cold"]["index_s"], runs["cached"]["index_s"]),
        "cold_index_s_excl_embedding_load": cold_index_net,
        "index_ratio_excl_embedding_load": ratio(cold_index_net, runs["cached"]["index_s"]),
        "wall_ratio_cold_over_cached": ratio(runs["cold"]["wall_s"], runs["cached"]["wall_s"]),
    }


# ----------------------------------------------------------------------------- part 2
def raw_generate(llm: Any, prompt: str, stop: list[str], gen: Gen) -> dict[str, Any]:
    """Plain llama-cpp-python, timed as ragqa times itself: request -> first chunk -> last chunk."""
    llm.reset()  # ragqa resets before each generation, so both re-process the whole prompt
    t0 = time.perf_counter()
    first = last = None
    chunks = 0
    text = []
    for part in llm.create_completion(
        prompt, stop=stop, stream=True, max_tokens=gen.max_new_tokens, temperature=gen.temperature,
        top_k=TOP_K, top_p=TOP_P, repeat_penalty=REPEAT_PENALTY,
    ):
        choice = part["choices"][0]
        if choice.get("finish_reason") is None:  # token chunks only, as ragqa counts them
            now = time.perf_counter()
            if first is None:
                first = now
            last = now
            chunks += 1
        text.append(choice["text"])
    decode_s = (last - first) if first is not None else 0.0
    return {
        "completion_tokens": chunks,
        "prompt_s": (first - t0) if first is not None else 0.0,
        "decode_s": decode_s,
        "decode_tokens_per_s": (chunks - 1) / decode_s if chunks >= 2 and decode_s > 0 else 0.0,
        "text": "".join(text),
    }


def ragqa_generate(backend: Any, prompt: str, stop: list[str], params: dict[str, Any]) -> dict[str, Any]:
    text = "".join(backend.stream(prompt, stop=stop, **params))
    s = backend.stats
    return {
        "completion_tokens": s.completion_tokens,
        "prompt_s": s.prompt_seconds,
        "decode_s": s.decode_seconds,
        "decode_tokens_per_s": s.decode_tokens_per_s,
        "text": text,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    tps = [r["decode_tokens_per_s"] for r in runs]
    return {
        "median_tokens_per_s": statistics.median(tps) if tps else None,
        "min_tokens_per_s": min(tps) if tps else None,
        "max_tokens_per_s": max(tps) if tps else None,
        "completion_tokens": sorted({r["completion_tokens"] for r in runs}),
        "median_prompt_s": statistics.median(r["prompt_s"] for r in runs) if runs else None,
        "max_other_cpu_pct": _max_other(runs),
        "runs": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "text"} for r in runs],
    }


def _max_other(runs: list[dict[str, Any]]) -> float | None:
    vals = [r["other_cpu_pct"] for r in runs if r.get("other_cpu_pct") is not None]
    return max(vals) if vals else None


def decode_speed(prompt: str, model_path: Path, gen: Gen, repeats: int, warmup: int) -> dict[str, Any]:
    import llama_cpp
    from ragqa.config import load_settings
    from ragqa.llms import GenerationParams, load_backend

    settings = load_settings(
        None, model=MODEL_NAME, n_ctx=N_CTX, n_batch=N_BATCH, n_threads=gen.threads, n_gpu_layers=0,
        temperature=gen.temperature, top_k=TOP_K, top_p=TOP_P, repeat_penalty=REPEAT_PENALTY,
        seed=gen.seed, max_new_tokens=gen.max_new_tokens,
    )
    progress("decode: loading ragqa backend and raw llama_cpp.Llama ...")
    backend = load_backend(settings)
    if Path(backend.path).resolve() != model_path.resolve():
        raise BenchError(f"ragqa loaded {backend.path}, expected {model_path}")
    stop = list(backend.chat_format("auto").stop)
    params = asdict(GenerationParams.from_settings(settings))
    raw = llama_cpp.Llama(
        model_path=str(model_path), n_ctx=N_CTX, n_threads=gen.threads, n_batch=N_BATCH,
        seed=gen.seed, verbose=False,
    )
    prompt_tokens = backend.count_tokens(prompt)
    progress(f"decode: prompt {prompt_tokens} tokens, stop {stop}, params {params}")

    for i in range(warmup):
        progress(f"decode: warm-up {i + 1}/{warmup} (raw, ragqa; not counted) ...")
        raw_generate(raw, prompt, stop, gen)
        ragqa_generate(backend, prompt, stop, params)

    results: dict[str, list[dict[str, Any]]] = {"raw": [], "ragqa": []}
    for r in range(repeats):
        order = ("raw", "ragqa") if r % 2 == 0 else ("ragqa", "raw")
        for who in order:
            with CpuMeter(children=False) as meter:
                res = raw_generate(raw, prompt, stop, gen) if who == "raw" else ragqa_generate(backend, prompt, stop, params)
            res["order"] = r
            res["other_cpu_pct"] = meter.other_cpu_pct
            results[who].append(res)
            progress(
                f"decode: repeat {r + 1}/{repeats} {who:5s}: {res['decode_tokens_per_s']:.2f} tok/s, "
                f"{res['completion_tokens']} chunks, prompt {res['prompt_s']:.2f}s, other CPU {res['other_cpu_pct']}%"
            )
    texts = {r["text"] for rs in results.values() for r in rs}
    return {
        "raw_text": results["raw"][0]["text"],
        "prompt_tokens": prompt_tokens,
        "prompt_chars": len(prompt),
        "stop": stop,
        "params": params,
        "seed": gen.seed,
        "same_text_all_runs": len(texts) == 1,
        "raw": summarize(results["raw"]),
        "ragqa": summarize(results["ragqa"]),
    }


# ----------------------------------------------------------------------------- output
def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, list):
        return "/".join(str(x) for x in v)
    return str(v)


def table(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


OTHER_CPU_WARN = 10.0


def _all_other(res: dict[str, Any]) -> list[float | None]:
    vals = [c[k]["other_cpu_pct"] for c in res["cold_vs_cached"] for k in ("cold", "cached")]
    d = res["decode"]
    vals += [r.get("other_cpu_pct") for key in ("raw", "ragqa", "cli") for r in d[key]["runs"]]
    return vals


def report(res: dict[str, Any], markdown: bool) -> str:
    h = (lambda s: f"### {s}") if markdown else (lambda s: f"== {s} ==")
    m = res["machine"]
    out = [h("Machine"), ""]
    rows = [
        ["CPU", m["cpu_model"]],
        ["cores", f"{m['physical_cores']} physical, {m['logical_cpus']} logical ({m['usable_cpus']} usable)"],
        ["threads used", str(m["threads"])],
        ["llama-cpp-python", m["llama_cpp_python"]],
        ["model", f"{m['model_file']} ({m['model_mb']} MiB)"],
        ["load average (start / end)", f"{m['loadavg_start']} / {m.get('loadavg_end', 'n/a')}"],
        ["generation", res["config"]["generation"]],
    ]
    out += [table(["fact", "value"], rows, markdown), ""]

    out += [h("Cold vs cached `ragqa ask --json`" if markdown else "Cold vs cached ragqa ask --json"), ""]
    rows = []
    for c in res["cold_vs_cached"]:
        for kind in ("cold", "cached"):
            r = c[kind]
            rows.append([
                c["label"], kind, fmt(r["wall_s"]), fmt(r["index_s"], 3),
                f"{r['files_cached']}/{r['files']}", fmt(r["chunks"]), fmt(r["embedding_load_s"]),
                fmt(r["answer_s"]), fmt(r["other_cpu_pct"], 1),
            ])
    out += [table(["document", "run", "wall s", "index_s", "files_cached", "chunks", "embed load s", "answer s",
                   "other CPU %"], rows, markdown), ""]
    for c in res["cold_vs_cached"]:
        out.append(
            f"{'- ' if markdown else ''}{c['label']}: cold/cached index_s = {fmt(c['index_ratio_cold_over_cached'], 1)}x "
            f"({fmt(c['index_ratio_excl_embedding_load'], 1)}x without the {fmt(c['cold']['embedding_load_s'])}s "
            f"embedding-model load inside cold indexing), wall = {fmt(c['wall_ratio_cold_over_cached'], 2)}x"
        )
    out.append("")

    d = res["decode"]
    out += [h("Decode speed (same GGUF, prompt, threads, sampling)"), ""]
    cli = d["cli"]
    rows = [
        ["raw llama-cpp-python", fmt(d["raw"]["median_tokens_per_s"]),
         f"{fmt(d['raw']['min_tokens_per_s'])}-{fmt(d['raw']['max_tokens_per_s'])}",
         fmt(d["raw"]["completion_tokens"]), fmt(d["prompt_tokens"]), fmt(d["raw"]["median_prompt_s"]),
         str(len(d["raw"]["runs"])), fmt(d["raw"]["max_other_cpu_pct"], 1)],
        ["ragqa backend (in-process)", fmt(d["ragqa"]["median_tokens_per_s"]),
         f"{fmt(d['ragqa']['min_tokens_per_s'])}-{fmt(d['ragqa']['max_tokens_per_s'])}",
         fmt(d["ragqa"]["completion_tokens"]), fmt(d["prompt_tokens"]), fmt(d["ragqa"]["median_prompt_s"]),
         str(len(d["ragqa"]["runs"])), fmt(d["ragqa"]["max_other_cpu_pct"], 1)],
        ["ragqa ask --json (CLI)", fmt(cli["median_tokens_per_s"]),
         f"{fmt(cli['min_tokens_per_s'])}-{fmt(cli['max_tokens_per_s'])}",
         fmt(cli["completion_tokens"]), fmt(cli["prompt_tokens"]), fmt(cli["median_prompt_s"]),
         str(len(cli["runs"])), fmt(cli["max_other_cpu_pct"], 1)],
    ]
    out += [table(["path", "median tok/s", "min-max", "completion tokens", "prompt tokens", "median prompt s", "runs",
                   "max other CPU %"], rows, markdown), ""]
    b = "- " if markdown else ""
    out.append(f"{b}ragqa backend / raw decode tok/s = {fmt(d['ratio_ragqa_over_raw'], 3)}")
    out.append(f"{b}ragqa CLI / raw decode tok/s = {fmt(d['ratio_cli_over_raw'], 3)}")
    out.append(f"{b}identical generated text in every raw and in-process ragqa run: {'yes' if d['same_text_all_runs'] else 'NO'}")
    out.append(f"{b}CLI answers equal the raw text (stripped): {'yes' if d['cli_same_text_as_raw'] else 'NO'}")
    out.append(f"{b}decode prompt: `ragqa ask --dry-run` on {Path(d['doc']).name}; stop {d['stop']}")
    out.append(f"{b}completion tokens = streamed token chunks, counted the way ragqa counts them (the final, empty finish chunk excluded)")
    out.append(f"{b}other CPU % = CPU time used by other processes during a measurement, as a share of all CPUs")
    busy = [v for v in _all_other(res) if v is not None and v >= OTHER_CPU_WARN]
    if busy:
        out.append(f"{b}WARNING: {len(busy)} measurement(s) ran while other processes used >= {OTHER_CPU_WARN:.0f}% "
                   "of the CPUs; llama.cpp with one thread per core slows down sharply when it must share them. "
                   "Re-run on a quiet machine for numbers to quote.")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--doc", type=Path, help="main document (default: Chinese text from CMRC 2018 trial contexts)")
    p.add_argument("--question", help="question for the main document (default: the corpus's first question)")
    p.add_argument("--squad-json", type=Path, default=DEFAULT_ZH, help="SQuAD-format file the default corpus is built from")
    p.add_argument("--paragraphs", type=int, default=100, help="contexts concatenated into the default corpus (default 100)")
    p.add_argument("--no-small", action="store_true", help="skip the small reference document")
    p.add_argument("--decode-doc", choices=("small", "main"), default="small",
                   help="whose --dry-run prompt the decode benchmark uses (default small: a short prompt keeps "
                        "prompt processing, which is not measured, from dominating the run time)")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: physical cores, like ragqa)")
    p.add_argument("--temperature", type=float, default=0.0, help="default 0 (greedy, so every path generates the same tokens)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed generations per path (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed generations per path first (default 1)")
    p.add_argument("--json-out", type=Path, help="write all results to this JSON file")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.decode_doc == "small" and args.no_small:
        args.decode_doc = "main"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    started = time.perf_counter()
    for k in [k for k in os.environ if k.startswith("RAGQA_")]:
        progress(f"ignoring {k} from the environment (the benchmark sets every setting itself)")
        del os.environ[k]
    try:
        from ragqa.errors import RagqaError
        from ragqa.models import resolve_llm_path
    except ImportError as exc:
        raise BenchError(f"cannot import ragqa ({exc}); run with the project's venv: .venv/bin/python bench/bench_ask.py") from None
    try:
        model_path = resolve_llm_path(MODEL_NAME)
    except RagqaError as exc:
        raise BenchError(f"the starter LLM is missing: {exc}") from None
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise BenchError("llama-cpp-python is not installed in this interpreter") from None

    threads = args.threads or physical_cores()
    gen = Gen(args, threads)
    machine = machine_facts(threads, model_path)
    load1 = float(machine["loadavg_start"].split()[0]) if machine["loadavg_start"] != "n/a" else 0.0
    if load1 > 0.5 * (os.cpu_count() or 1):
        progress(f"note: load average is {machine['loadavg_start']} before starting; other work on this machine will skew timings")

    with tempfile.TemporaryDirectory(prefix="ragqa-bench-") as tmp:
        tmp = Path(tmp)
        if args.doc:
            if not args.doc.is_file():
                raise BenchError(f"--doc {args.doc}: no such file")
            main_doc, n_par = args.doc.resolve(), None
            main_q = args.question or "这份文件主要讲了什么？"
            main_label = main_doc.name
        else:
            main_doc, q, n_par = build_zh_corpus(args.squad_json.resolve(), args.paragraphs, tmp)
            main_q = args.question or q
            main_label = f"CMRC2018 trial x{n_par} paragraphs (zh)"
        progress(f"main document {main_doc} ({main_doc.stat().st_size} bytes), question {main_q!r}")

        cvc = [cold_vs_cached(main_label, main_doc, main_q, gen, tmp / "cache-main")]
        if not args.no_small:
            if not SMALL_DOC.is_file():
                raise BenchError(f"{SMALL_DOC} is missing (use --no-small)")
            cvc.append(cold_vs_cached(f"{SMALL_DOC.name} (small, en)", SMALL_DOC, SMALL_QUESTION, gen, tmp / "cache-small"))

        d_doc, d_q, d_c = (main_doc, main_q, cvc[0]) if args.decode_doc == "main" else (SMALL_DOC, SMALL_QUESTION, cvc[1])
        cache = Path(d_c["cache_dir"])
        progress(f"decode: ragqa ask --dry-run on {d_doc.name} for the exact prompt ...")
        prompt = run_ask(d_doc, d_q, gen, cache, dry_run=True)["prompt"]

        # end-to-end CLI figures: the two runs above plus cached runs up to --repeats
        cli_runs = [d_c["cold"], d_c["cached"]]
        while len(cli_runs) < args.repeats:
            progress(f"decode: extra ragqa ask --json (cached) on {d_doc.name} for the CLI figure ...")
            cli_runs.append(run_ask(d_doc, d_q, gen, cache))

        decode = decode_speed(prompt, model_path, gen, args.repeats, args.warmup)
        tps = [r["decode_tokens_per_s"] for r in cli_runs]
        decode["doc"] = str(d_doc)
        decode["question"] = d_q
        decode["cli"] = {
            "median_tokens_per_s": statistics.median(tps),
            "min_tokens_per_s": min(tps),
            "max_tokens_per_s": max(tps),
            "completion_tokens": sorted({r["completion_tokens"] for r in cli_runs}),
            "prompt_tokens": sorted({r["prompt_tokens"] for r in cli_runs}),
            "median_prompt_s": statistics.median(r["prompt_s"] for r in cli_runs),
            "max_other_cpu_pct": _max_other(cli_runs),
            "runs": [{k: r[k] for k in ("decode_tokens_per_s", "completion_tokens", "prompt_tokens", "prompt_s", "decode_s", "wall_s", "files_cached", "other_cpu_pct")} for r in cli_runs],
        }
        if decode["cli"]["prompt_tokens"] != [decode["prompt_tokens"]]:
            progress(f"WARNING: CLI prompt tokens {decode['cli']['prompt_tokens']} != dry-run prompt {decode['prompt_tokens']}")
        # the CLI strips the answer it prints
        decode["cli_same_text_as_raw"] = all(r["answer"] == decode["raw_text"].strip() for r in cli_runs)
        raw_med = decode["raw"]["median_tokens_per_s"]
        decode["ratio_ragqa_over_raw"] = ratio(decode["ragqa"]["median_tokens_per_s"], raw_med)
        decode["ratio_cli_over_raw"] = ratio(decode["cli"]["median_tokens_per_s"], raw_med)

    machine["loadavg_end"] = loadavg()
    results = {
        "machine": machine,
        "config": {
            "threads": threads, "temperature": gen.temperature, "top_k": TOP_K, "top_p": TOP_P,
            "repeat_penalty": REPEAT_PENALTY, "seed": gen.seed, "max_new_tokens": gen.max_new_tokens,
            "n_ctx": N_CTX, "n_batch": N_BATCH, "repeats": args.repeats, "warmup": args.warmup,
            "paragraphs": n_par, "decode_doc": args.decode_doc,
            "generation": f"temperature {gen.temperature}, top_k {TOP_K}, top_p {TOP_P}, repeat_penalty "
                          f"{REPEAT_PENALTY}, seed {gen.seed}, max_new_tokens {gen.max_new_tokens}, n_ctx {N_CTX}, n_batch {N_BATCH}",
        },
        "cold_vs_cached": cvc,
        "decode": decode,
        "total_s": round(time.perf_counter() - started, 1),
    }
    sys.stdout.write(report(results, args.markdown))
    progress(f"done in {results['total_s']:.0f}s")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        progress(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench_ask: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench_ask: interrupted", file=sys.stderr)
        sys.exit(130)
