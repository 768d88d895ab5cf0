"""Cross-script retrieval: a Traditional question over a Simplified document and back, with the
keyword words folded to one script (``Settings.keyword_fold``) and without.

The sets are made at run time from the shared evaluation data (../shared/eval):

- DRCD dev (Traditional, Taiwan): the questions as they are, the contexts (and answers) converted
  to Simplified with OpenCC ``tw2sp`` (mainland characters and words, as a Simplified text says it);
- CMRC2018 trial (Simplified): the questions as they are, the contexts converted to Traditional
  with ``s2twp`` (Taiwan characters and words).

The conversions of the documents are not the fold (which is Traditional -> Simplified, characters
and variants): a fold that only undid its own conversion would measure nothing. Each set runs
through ragqa's own ``evaluate`` (``--compare bm25,hybrid``) under every fold asked for, beside the
same-script set; the eval KB of each set is embedded once (cache folder ``--cache``) and only
re-tokenized when the fold changes. Also measured: OpenCC's load time in a fresh process, the
keyword path's ready time with and without the fold, the fold's cost per context and per question.

    .venv/bin/python bench/bench_cross_script.py --max-contexts 300
    .venv/bin/python bench/bench_cross_script.py --max-contexts 300 --folds none,t2s,tw2s,hk2s,tw2sp --compare bm25
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EVAL = REPO.parent / "shared" / "eval" / "zh_mrc"
SETS = {  # name -> (file, the script of its questions, the OpenCC config making the other script's contexts)
    "DRCD dev": ("DRCD_dev.json", "Traditional", "tw2sp"),
    "CMRC2018 trial": ("cmrc2018_trial.squad.json", "Simplified", "s2twp"),
}
READY = ("import time; t = time.perf_counter()\n"
         "from ragqa.words import tokenize, use_keyword_fold\n"
         "use_keyword_fold({fold!r})\n"
         "tokenize('觀景臺是誰設計的？')\n"
         "print(time.perf_counter() - t)")
OPENCC_LOAD = ("import time; t = time.perf_counter()\n"
               "import opencc\n"
               "c = opencc.OpenCC({config!r})\n"
               "c.convert('觀景臺是誰設計的？')\n"
               "print(time.perf_counter() - t)")


def convert_set(source: Path, config: str, max_contexts: int, out: Path) -> Path:
    """The SQuAD file with its first ``max_contexts`` contexts and their answers converted."""
    import opencc

    conv = opencc.OpenCC(f"{config}.json")
    data = json.loads(source.read_text("utf-8"))
    seen = 0
    articles = []
    for article in data["data"]:
        paragraphs = []
        for para in article["paragraphs"]:
            if seen >= max_contexts:
                break
            seen += 1
            context = conv.convert(para["context"])
            qas = []
            for qa in para["qas"]:
                answers = []
                for a in qa.get("answers", []):
                    text = conv.convert(a["text"])
                    answers.append({"text": text, "answer_start": max(context.find(text), 0)})
                qas.append({**qa, "answers": answers})
            paragraphs.append({"context": context, "qas": qas})
        if paragraphs:
            articles.append({**article, "paragraphs": paragraphs})
        if seen >= max_contexts:
            break
    out.write_text(json.dumps({"version": "cross-script", "data": articles}, ensure_ascii=False), "utf-8")
    return out


def run_eval(path: Path, fold: str, args: argparse.Namespace) -> dict:
    from ragqa.config import Settings
    from ragqa.evaluation import evaluate
    from ragqa.pipeline import Pipeline

    pipeline = Pipeline(Settings(keyword_fold=fold, cache_dir=args.cache))
    t = time.perf_counter()
    report = evaluate(path, pipeline, max_contexts=args.max_contexts, compare=args.compare, progress=False)
    report["wall_s"] = time.perf_counter() - t
    return report


def fresh_seconds(code: str, runs: int) -> float:
    """The median of what a fresh process prints (a time it measured inside itself)."""
    out = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              cwd=REPO, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
        out.append(float(proc.stdout.strip().splitlines()[-1]))
    return statistics.median(out)


def fold_costs(paths: dict[str, Path], max_contexts: int) -> list[str]:
    """The fold's own cost: per context (what indexing pays) and per question (what a search pays)."""
    from ragqa.evaluation import load_squad
    from ragqa.words import fold, tokenize, use_keyword_fold

    lines = []
    for name, path in paths.items():
        contexts, items = load_squad(path, max_contexts)
        questions = [it.question for it in items]
        fold(contexts[0], "t2s")  # the converter loaded
        row = {}
        for label, texts in (("contexts", contexts), ("questions", questions)):
            t = time.perf_counter()
            for x in texts:
                fold(x, "t2s")
            folding = (time.perf_counter() - t) / len(texts)
            timed = {}
            for f in ("none", "t2s"):
                use_keyword_fold(f)
                tokenize(texts[0])
                t = time.perf_counter()
                for x in texts:
                    tokenize(x)
                timed[f] = (time.perf_counter() - t) / len(texts)
            row[label] = (len(texts), statistics.mean(map(len, texts)), folding, timed)
        for label, (n, chars, folding, timed) in row.items():
            lines.append(f"| {name} | {label} ({n}, {chars:.0f} chars) | {folding * 1e6:.0f} µs | "
                         f"{timed['none'] * 1e3:.2f} ms | {timed['t2s'] * 1e3:.2f} ms |")
    use_keyword_fold("t2s")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-contexts", type=int, default=300)
    ap.add_argument("--folds", default="none,t2s", help="keyword folds to compare (none = before)")
    ap.add_argument("--compare", default="bm25,hybrid", help="retrievers, as ragqa eval --compare")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "ragqa-bench-cross-script",
                    help="cache folder of the eval KBs (kept: a second run embeds nothing)")
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per start-up figure")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.cache.mkdir(parents=True, exist_ok=True)
    folds = args.folds.split(",")
    retrievers = args.compare.split(",")

    paths: dict[str, dict[str, Path]] = {}
    for name, (file, script, config) in SETS.items():
        source = EVAL / file
        other = "Simplified" if script == "Traditional" else "Traditional"
        converted = convert_set(source, config, args.max_contexts, args.cache / f"{source.stem}.{config}.json")
        paths[name] = {f"same script ({script})": source, f"{script} q / {other} docs ({config})": converted}

    rows = []
    for name, variants in paths.items():
        for variant, path in variants.items():
            for fold in folds:
                report = run_eval(path, fold, args)
                figures = report["compare"]
                rows.append((name, variant, fold, report["questions"], report["contexts"], report["wall_s"],
                             {r: (figures[r]["recall@1"], figures[r]["recall@5"]) for r in retrievers}))
                print(f"{name} | {variant} | fold {fold}: " + ", ".join(
                    f"{r} {a:.3f}/{b:.3f}" for r, (a, b) in rows[-1][-1].items()), file=sys.stderr, flush=True)

    head = " | ".join(f"{r} R@1 | {r} R@5" for r in retrievers)
    print(f"\n| set | questions / documents | fold | questions | contexts | {head} |")
    print("|---|---|---|---|---|" + "---|" * (2 * len(retrievers)))
    for name, variant, fold, nq, nc, _, figs in rows:
        cells = " | ".join(f"{100 * a:.1f} | {100 * b:.1f}" for a, b in figs.values())
        print(f"| {name} | {variant} | {fold} | {nq} | {nc} | {cells} |")

    print("\n| set | texts | t2s fold each | tokenize each, fold none | tokenize each, fold t2s |")
    print("|---|---|---|---|---|")
    for line in fold_costs({n: v[next(iter(v))] for n, v in paths.items()}, args.max_contexts):
        print(line)

    print(f"\nfresh process, median of {args.runs}:")
    for config in ("t2s", "tw2s", "hk2s", "tw2sp"):
        print(f"  import opencc + OpenCC('{config}.json') + one convert: "
              f"{1000 * fresh_seconds(OPENCC_LOAD.format(config=config + '.json'), args.runs):.1f} ms")
    for fold in ("none", "t2s"):
        print(f"  keyword path ready (import ragqa.words, tokenize a question), fold {fold}: "
              f"{1000 * fresh_seconds(READY.format(fold=fold), args.runs):.1f} ms")


if __name__ == "__main__":
    main()
