"""Hybrid fusion side by side on the dev sets: vector, BM25, rank fusion and the default, one table.

Runs `ragqa eval DATA --compare vector,bm25,rrf,hybrid --json` per dev set (one index and one
search per set; the four rows differ only in how the hits are ranked) and prints recall@1, @5,
MRR and answer-in-top-k (where the data has answers) as a Markdown table, plus a check of the
rule the default must meet: hybrid recall@1 >= max(vector, bm25) - 0.005 on every set.

    .venv/bin/python bench/build_search_sets.py          # the search-style sets (once)
    .venv/bin/python bench/fusion_matrix.py --cache-dir .cache/eval
    .venv/bin/python bench/fusion_matrix.py --only CSL --compare vector,bm25,rrf,hybrid,zscore:lift=0

Indexing embeds every document once per cache folder (multilingual-e5-small: ~3 chunks/s on
2 cores, about 25 minutes for all sets); later runs cost only the searches.
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
SETS = ROOT / ".cache" / "search_sets"  # bench/build_search_sets.py writes them here
DATASETS = {  # name: (file, --max-contexts)
    "CMRC2018 trial (MRC questions)": (EVAL / "zh_mrc/cmrc2018_trial.squad.json", None),
    "CMRC2018 trial, keyword queries": (SETS / "cmrc2018_trial_keywords.jsonl", None),
    "DRCD dev, 200 contexts (MRC)": (EVAL / "zh_mrc/DRCD_dev.json", 200),
    "DRCD dev, 200 contexts, keywords": (SETS / "drcd_dev200_keywords.jsonl", None),
    "SQuAD 1.1 dev, 200 contexts (en, MRC)": (EVAL / "en_mrc/squad_dev_v1.1.json", 200),
    "SQuAD 1.1 dev, 200 contexts, keywords": (SETS / "squad_dev200_keywords.jsonl", None),
    "CSL title -> abstract (400)": (SETS / "csl_titles.jsonl", 400),
    "CSL title keywords -> abstract (400)": (SETS / "csl_title_keywords.jsonl", 400),
    "VCSum headline -> meeting segment (135)": (SETS / "vcsum_headlines.jsonl", None),
    "VCSum summary -> meeting segment (135)": (SETS / "vcsum_summaries.jsonl", None),
    "Medical Q&A title -> doctor's answer (1500)": (SETS / "medical_titles.jsonl", None),
}
DEFAULT_COMPARE = "vector,bm25,rrf,hybrid"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", default=None, help="index cache (default: a temporary folder)")
    ap.add_argument("--compare", default=DEFAULT_COMPARE, help=f"retrievers to compare (default {DEFAULT_COMPARE})")
    ap.add_argument("--only", default=None, help="run only datasets whose name contains this")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    cache = args.cache_dir or tempfile.mkdtemp(prefix="ragqa-eval-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")}
    env["RAGQA_CACHE_DIR"] = str(Path(cache).resolve())
    results = []
    print("| data | retriever | recall@1 | recall@5 | MRR | answer in top-4 |")
    print("|---|---|---|---|---|---|")
    for name, (path, max_ctx) in DATASETS.items():
        if args.only and args.only not in name:
            continue
        if not path.exists():
            print(f"skipping {name}: {path} not found (run bench/build_search_sets.py)", file=sys.stderr)
            continue
        cmd = [sys.executable, "-m", "ragqa", "eval", str(path), "--compare", args.compare, "--json"]
        if max_ctx:
            cmd += ["--max-contexts", str(max_ctx)]
        print(f"{name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if proc.returncode != 0:
            print(f"  failed: {proc.stderr.strip()}", file=sys.stderr)
            continue
        report = json.loads(proc.stdout)
        k = report["settings"]["k"]
        results.append({"data": name, **report})
        for label, row in report["compare"].items():
            shown = f"hybrid ({row['fusion']}, default)" if label == "hybrid" else label
            answer = row.get(f"answer_in_context@{k}(k)")
            print(f"| {name} ({report['questions']} q) | {shown} | {row['recall@1']:.3f} | {row['recall@5']:.3f} | "
                  f"{row['mrr']:.3f} | {'-' if answer is None else f'{answer:.3f}'} |", flush=True)
    for r in results:
        rows = r["compare"]
        if {"vector", "bm25", "hybrid"} <= set(rows):
            best = max(rows["vector"]["recall@1"], rows["bm25"]["recall@1"])
            hybrid = rows["hybrid"]["recall@1"]
            verdict = ("above both" if hybrid > best else
                       "meets the rule" if hybrid >= best - 0.005 else "BELOW the rule")
            print(f"{r['data']}: hybrid {hybrid:.3f} vs best single {best:.3f} ({hybrid - best:+.3f}): {verdict}",
                  file=sys.stderr)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
