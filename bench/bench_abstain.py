"""Abstention: how often ragqa says "the documents do not say" to questions its knowledge base
cannot answer, and how often it keeps the questions it can.

Per dev set, `ragqa eval DATA --distractors OTHER --json` (hybrid k=4, the calibration ragqa
makes for any KB, here for the set's index): `recall` is the share of OTHER's questions it
abstains on, `answerable_kept` the share of DATA's own questions it keeps, `precision` the share
of its abstentions that were distractors. Distractors: for CMRC2018 trial, DRCD dev's questions
(another set in the same language); for the first half of CMRC2018 trial, DRCD and SQuAD, the
questions of the articles held apart from the indexed contexts (same encyclopedia, other
articles: the hard case, questions near the collection's topics). Goal of issue 19: recall >= 0.90
with answerable_kept >= 0.97 on every set.

    .venv/bin/python bench/bench_abstain.py --cache-dir .cache/eval
    .venv/bin/python bench/bench_abstain.py --cache-dir .cache/eval --strictness 0.3,0.5,0.7
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT.parent / "shared" / "eval"
DISTRACTOR_LIMIT = 800  # distractor questions per set
SETS = {  # name: (data, contexts indexed, distractors: "held-apart" or another file)
    "CMRC2018 trial": (EVAL / "zh_mrc/cmrc2018_trial.squad.json", None, EVAL / "zh_mrc/DRCD_dev.json"),
    "CMRC2018 trial, 128 contexts": (EVAL / "zh_mrc/cmrc2018_trial.squad.json", 128, "held-apart"),
    "DRCD dev, 200 contexts": (EVAL / "zh_mrc/DRCD_dev.json", 200, "held-apart"),
    "SQuAD 1.1 dev, 200 contexts (en)": (EVAL / "en_mrc/squad_dev_v1.1.json", 200, "held-apart"),
}


def held_apart(path: Path, max_contexts: int, out: Path) -> Path:
    """The questions of the articles none of the first ``max_contexts`` contexts belongs to, as a
    SQuAD file (at most DISTRACTOR_LIMIT, in file order)."""
    data = json.loads(path.read_text("utf-8"))
    seen: set[str] = set()
    kept, n = [], 0
    for article in data["data"]:
        paragraphs = []
        touched = False
        for para in article["paragraphs"]:
            if para["context"] not in seen and len(seen) < max_contexts and para["context"].strip():
                seen.add(para["context"])
                touched = True
            paragraphs.append(para)
        if touched or n >= DISTRACTOR_LIMIT:
            continue
        for para in paragraphs:
            para = {**para, "qas": para["qas"][:max(0, DISTRACTOR_LIMIT - n)]}
            n += len(para["qas"])
            kept.append(para)
    out.write_text(json.dumps({"data": [{"paragraphs": kept}]}, ensure_ascii=False), "utf-8")
    return out


def first_questions(path: Path, out: Path) -> Path:
    """The first DISTRACTOR_LIMIT questions of a SQuAD file, as a SQuAD file."""
    data = json.loads(path.read_text("utf-8"))
    kept, n = [], 0
    for article in data["data"]:
        for para in article["paragraphs"]:
            if n >= DISTRACTOR_LIMIT:
                break
            para = {**para, "qas": para["qas"][:DISTRACTOR_LIMIT - n]}
            n += len(para["qas"])
            kept.append(para)
    out.write_text(json.dumps({"data": [{"paragraphs": kept}]}, ensure_ascii=False), "utf-8")
    return out


def run(path: Path, max_ctx: int | None, distractors: Path, strictness: str, env: dict) -> dict:
    """``ragqa eval --distractors`` with the default context, through bench_context's runner."""
    from bench_context import run as eval_json  # beside this script

    return eval_json(path, max_ctx, "sentences", env, "--distractors", str(distractors),
                     "--abstain-strictness", strictness)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", default=None, help="index cache (default: a temporary folder)")
    ap.add_argument("--strictness", default="0.5", help="comma-separated abstain_strictness values")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")}
    env["RAGQA_CACHE_DIR"] = str(Path(args.cache_dir or tempfile.mkdtemp(prefix="ragqa-abstain-")).resolve())
    tmp = Path(tempfile.mkdtemp(prefix="ragqa-distractors-"))
    print("| data (questions) | distractors (questions) | strictness | answerable kept | distractors abstained "
          "| precision | calibration |")
    print("|---|---|---|---|---|---|---|")
    for name, (path, max_ctx, other) in SETS.items():
        if not path.exists():
            print(f"skipping {name}: {path} not found", file=sys.stderr)
            continue
        label = "held-apart articles" if other == "held-apart" else f"{Path(other).name}"
        if other == "held-apart":
            distractors = held_apart(path, max_ctx, tmp / f"{path.stem}-held-apart.json")
        else:
            distractors = first_questions(Path(other), tmp / f"{Path(other).stem}-first.json")
        for strictness in args.strictness.split(","):
            r = run(path, max_ctx, distractors, strictness.strip(), env)
            a = r["abstain"]
            cal = a["calibration"]
            print(f"| {name} ({r['questions']}) | {label} ({a['distractors']}) | {a['strictness']:g} | "
                  f"{a['answerable_kept']:.3f} | {a['recall']:.3f} | {a['precision']:.3f} | "
                  f"{cal['chunks']} chunks, leave-{cal['mode']}-out, {cal['seconds']:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
