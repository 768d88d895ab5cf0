"""Retrieval quality of ragqa configurations on the shared SQuAD-format data, as one Markdown table.

Runs `ragqa eval --json` for each (dataset, configuration) and prints recall@1/@4(k)/@10, MRR and
answer_in_context@4, plus the index and search time. The first row of each dataset is the seed
scripts' configuration (LangChain's default English separators, 600/100, k=1, vector search
with the same embedding).

    .venv/bin/python bench/retrieval_matrix.py                 # all datasets, ~15 min on 2 cores
    .venv/bin/python bench/retrieval_matrix.py --json-out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT.parent / "shared" / "eval"
DATASETS = {
    "CMRC2018 trial (zh)": (EVAL / "zh_mrc/cmrc2018_trial.squad.json", None),
    "DRCD dev (zh-Hant), first 300 contexts": (EVAL / "zh_mrc/DRCD_dev.json", 300),
    "SQuAD 1.1 dev (en), first 300 contexts": (EVAL / "en_mrc/squad_dev_v1.1.json", 300),
}
MINILM, E5 = "all-MiniLM-L6-v2", "multilingual-e5-small"
CONFIGS = [
    ("seed: MiniLM vector, LangChain splitter 600/100, k=1", ["-e", MINILM, "--seed-baseline"]),
    ("seed splitter and k=1 with e5-small vector", ["-e", E5, "--seed-baseline"]),
    ("MiniLM vector, k=4", ["-e", MINILM, "--retriever", "vector"]),
    ("BM25 (jieba), k=4", ["-e", MINILM, "--retriever", "bm25"]),
    ("MiniLM + BM25 hybrid, k=4", ["-e", MINILM, "--retriever", "hybrid"]),
    ("e5-small vector, k=4", ["-e", E5, "--retriever", "vector"]),
    ("e5-small + BM25 hybrid, k=4", ["-e", E5, "--retriever", "hybrid"]),
    ("e5-small + BM25 hybrid, chunks 300/50, k=4", ["-e", E5, "--retriever", "hybrid", "--chunk-size", "300", "--chunk-overlap", "50"]),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", default=None, help="index cache (default: a temporary folder)")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--only", default=None, help="run only datasets whose name contains this")
    ap.add_argument("--config", default=None, help="run only configurations whose name contains this")
    args = ap.parse_args()
    cache = args.cache_dir or tempfile.mkdtemp(prefix="ragqa-eval-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")}
    env["RAGQA_CACHE_DIR"] = cache
    results = []
    print("| data | configuration | recall@1 | recall@k | recall@10 | MRR | answer in top-k | index s | search s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dname, (path, max_ctx) in DATASETS.items():
        if args.only and args.only not in dname:
            continue
        if not path.exists():
            print(f"skipping {dname}: {path} not found", file=sys.stderr)
            continue
        for cname, flags in CONFIGS:
            if args.config and args.config not in cname:
                continue
            cmd = [sys.executable, "-m", "ragqa", "eval", str(path), "--json", *flags]
            if max_ctx:
                cmd += ["--max-contexts", str(max_ctx)]
            print(f"{dname} / {cname} ...", file=sys.stderr, flush=True)
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"  failed: {proc.stderr.strip()}", file=sys.stderr)
                continue
            r = json.loads(proc.stdout)
            k = r["settings"]["k"]
            results.append({"data": dname, "config": cname, "wall_s": round(time.perf_counter() - t, 1), **r})
            print(f"| {dname} | {cname} | {r['recall@1']:.3f} | {r[f'recall@{k}(k)']:.3f} | {r['recall@10']:.3f} | "
                  f"{r['mrr']:.3f} | {r[f'answer_in_context@{k}(k)']:.3f} | "
                  f"{r['seconds']['index']:.0f} | {r['seconds']['search']:.1f} |", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
