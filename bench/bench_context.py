"""Compact context: what the model reads with `context = sentences` against whole chunks, per dev set.

Runs `ragqa eval DATA --json` twice per set, `--context chunks` and `--context sentences` (the
same index and the same retrieval, hybrid k=4), and prints the mean estimated context tokens per
question, their ratio, and `answer_in_prompt` (a gold answer inside the text the stuff prompt
would carry), with the goal of issue 19: at most 0.5x the tokens with answer_in_prompt within 1
point.

    .venv/bin/python bench/bench_context.py --cache-dir .cache/eval
    .venv/bin/python bench/bench_context.py --cache-dir .cache/eval --answers 40 --model qwen

`--answers N` also answers the first N questions of each set both ways with the model (`qwen`:
the Qwen2.5-Coder-0.5B bench model of bench/requirements.txt; else a model name or GGUF path) and
prints EM/F1, the model's prompt tokens and its time to the first token, with the goal: F1 not
lower, time to first token at most 0.6x; and the citations' precision (of the answers holding a
gold answer, the citations whose quote holds it too) and the share of answer sentences a source
supports (`ragqa.citations`). Abstention is off here: every question is answerable.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT.parent / "shared" / "eval"
SETS = {
    "CMRC2018 trial": (EVAL / "zh_mrc/cmrc2018_trial.squad.json", None),
    "DRCD dev, 200 contexts": (EVAL / "zh_mrc/DRCD_dev.json", 200),
    "SQuAD 1.1 dev, 200 contexts (en)": (EVAL / "en_mrc/squad_dev_v1.1.json", 200),
}


def run(path: Path, max_ctx: int | None, context: str, env: dict, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "ragqa", "eval", str(path), "--context", context, "--json", *extra]
    if max_ctx:
        cmd += ["--max-contexts", str(max_ctx)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(proc.stderr.strip())
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", default=None, help="index cache (default: a temporary folder)")
    ap.add_argument("--answers", type=int, default=0, help="also answer the first N questions per set")
    ap.add_argument("--model", default="qwen", help="with --answers: qwen (the bench model), or a model name or GGUF")
    ap.add_argument("--threads", default="2", help="with --answers: llama.cpp threads")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")}
    env["RAGQA_CACHE_DIR"] = str(Path(args.cache_dir or tempfile.mkdtemp(prefix="ragqa-ctx-")).resolve())
    print("| data (questions) | context tokens, chunks | sentences | ratio | answer in prompt, chunks | sentences | change |")
    print("|---|---|---|---|---|---|---|")
    for name, (path, max_ctx) in SETS.items():
        if not path.exists():
            print(f"skipping {name}: {path} not found", file=sys.stderr)
            continue
        whole, cut = run(path, max_ctx, "chunks", env), run(path, max_ctx, "sentences", env)
        ratio = cut["context_tokens"] / whole["context_tokens"]
        change = cut["answer_in_prompt"] - whole["answer_in_prompt"]
        print(f"| {name} ({whole['questions']}) | {whole['context_tokens']:.0f} | {cut['context_tokens']:.0f} | "
              f"{ratio:.2f}x | {whole['answer_in_prompt']:.3f} | {cut['answer_in_prompt']:.3f} | {change:+.3f} |",
              flush=True)


    if args.answers:
        answer_table(args, env)


def answer_table(args: argparse.Namespace, env: dict) -> None:
    model = args.model
    if model == "qwen":
        sys.path.insert(0, str(ROOT / "bench"))
        from bench_summarize import qwen_gguf
        model = str(qwen_gguf(Path.home() / ".cache" / "ragqa" / "bench"))
    extra = ("--answers", "--limit", str(args.answers), "-m", model, "--abstain", "off")
    env = {**env, "RAGQA_N_THREADS": args.threads, "RAGQA_TEMPERATURE": "0", "RAGQA_SEED": "0"}
    print()
    print(f"| data ({args.answers} questions) | F1, chunks | sentences | EM, chunks | sentences | "
          "prompt tokens, chunks | sentences | first token s, chunks | sentences | ratio | "
          "citation precision, chunks | sentences | supported, chunks | sentences |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (path, max_ctx) in SETS.items():
        if not path.exists():
            continue
        whole, cut = (run(path, max_ctx, c, env, *extra)["answers"] for c in ("chunks", "sentences"))
        print(f"| {name} | {whole['f1']:.3f} | {cut['f1']:.3f} | {whole['em']:.3f} | {cut['em']:.3f} | "
              f"{whole['prompt_tokens']:.0f} | {cut['prompt_tokens']:.0f} | {whole['ttft_s']:.2f} | "
              f"{cut['ttft_s']:.2f} | {cut['ttft_s'] / whole['ttft_s']:.2f}x | "
              f"{whole.get('citation_precision', 0):.3f} | {cut.get('citation_precision', 0):.3f} | "
              f"{whole.get('supported_rate', 0):.3f} | {cut.get('supported_rate', 0):.3f} |", flush=True)


if __name__ == "__main__":
    main()
