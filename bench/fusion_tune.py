"""How the default fusion was chosen: every dev set's candidate lists dumped once, fusions compared offline.

`dump` runs, per dev set, the same index and the same two searches as `ragqa eval` (top 20 of
each side, with scores) and writes them, with each candidate's document and BM25 words, to
`.cache/fusion/`. `grid` then ranks those candidates with every fusion spec given (the fusion code
of ragqa.fusion itself, so a spec here behaves as `--fusion SPEC` would) and prints recall@1 and
MRR per set on the even-numbered queries (where parameters are picked), the odd ones (where they
are checked) and all, with the rule the default must meet: recall@1 >= max(vector, bm25) - 0.005.

    .venv/bin/python bench/build_search_sets.py
    .venv/bin/python bench/fusion_tune.py dump                    # ~2 min when the indexes are cached
    .venv/bin/python bench/fusion_tune.py grid zscore rrf "zscore:w=0.6" "minmax:w=0.9"
    .venv/bin/python bench/fusion_tune.py grid --split odd zscore

Offline figures equal those of `ragqa eval --compare` on the same set (the same candidates, the
same fusion code); `bench/fusion_matrix.py` is the end-to-end check.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fusion_matrix import DATASETS  # noqa: E402

DUMPS = ROOT / ".cache" / "fusion"
DEPTH = 20


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def dump(cache_dir: str, only: str | None) -> None:
    os.environ["RAGQA_CACHE_DIR"] = str(Path(cache_dir).resolve())
    from ragqa.config import load_settings
    from ragqa.evaluation import build_eval_index, load_eval_data, search_candidates
    from ragqa.pipeline import Pipeline
    from ragqa.words import tokenize

    pipeline = Pipeline(load_settings(None))
    DUMPS.mkdir(parents=True, exist_ok=True)
    for name, (path, max_ctx) in DATASETS.items():
        if (only and only not in name) or not path.exists():
            continue
        print(f"{name} ...", file=sys.stderr, flush=True)
        contexts, items = load_eval_data(path, max_ctx)
        index = build_eval_index(contexts, pipeline.splitter.split_text, pipeline, pipeline.splitter_settings())
        questions = [it.question for it in items]
        found = search_candidates(index, pipeline.embeddings, questions, DEPTH, progress=False)
        chunks = {int(c.metadata["chunk_id"]): c for c in index.kb.iter_chunks(index.file_ids)}
        needed = {cid for hits in (found.vector or []) + (found.keyword or []) for cid, _ in hits}
        out = {
            "name": name, "questions": questions, "gold": [it.context_id for it in items],
            "vector": found.vector, "keyword": found.keyword,
            "context": {cid: chunks[cid].metadata["context"] for cid in needed},
            "words": {cid: sorted(set(tokenize(chunks[cid].page_content))) for cid in needed},
        }
        (DUMPS / f"{slug(name)}.json").write_text(json.dumps(out, ensure_ascii=False), "utf-8")


def load_dumps(only: str | None) -> list[dict]:
    dumps = []
    for name in DATASETS:
        path = DUMPS / f"{slug(name)}.json"
        if (only and only not in name) or not path.exists():
            continue
        d = json.loads(path.read_text("utf-8"))
        d["context"] = {int(k): v for k, v in d["context"].items()}
        d["words"] = {int(k): set(v) for k, v in d["words"].items()}
        dumps.append(d)
    return dumps


def score(d: dict, spec: str, split: str, follows: dict | None = None) -> tuple[float, float]:
    """(recall@1, MRR within the candidates) of one fusion spec ("vector", "bm25" or a fusion) on a
    dump; ``follows`` counts, where the two top-1s disagree and one of them is right, how often the
    fused top-1 is the right one ("vector": [followed, cases], "bm25": [...])."""
    from ragqa.fusion import make_fusion

    fuse = None if spec in ("vector", "bm25") else make_fusion(spec)
    words = d["words"].__getitem__
    hits1 = rr = n = 0
    for i, (q, gold, v, k) in enumerate(zip(d["questions"], d["gold"], d["vector"], d["keyword"])):
        if (split == "even" and i % 2) or (split == "odd" and not i % 2):
            continue
        ranked = [c for c, _ in (v if spec == "vector" else k if spec == "bm25" else fuse(q, v, k, words))]
        ctx = [d["context"][c] for c in ranked]
        n += 1
        if follows is not None and v and k:
            v_ok, k_ok = d["context"][v[0][0]] == gold, d["context"][k[0][0]] == gold
            if v_ok != k_ok:
                side = follows["vector" if v_ok else "bm25"]
                side[0] += bool(ctx) and ctx[0] == gold
                side[1] += 1
        hits1 += bool(ctx) and ctx[0] == gold
        rr += next((1 / (r + 1) for r, c in enumerate(ctx) if c == gold), 0.0)
    return hits1 / max(n, 1), rr / max(n, 1)


def grid(specs: list[str], split: str, only: str | None) -> None:
    dumps = load_dumps(only)
    if not dumps:
        raise SystemExit("no dumps: run `bench/fusion_tune.py dump` first")
    print(f"recall@1 / MRR on the {split} queries; rule: recall@1 >= max(vector, bm25) - 0.005")
    print("| data | vector | bm25 | " + " | ".join(specs) + " |")
    print("|---" * (len(specs) + 3) + "|")
    worst = {s: 1.0 for s in specs}
    follows = {s: {"vector": [0, 0], "bm25": [0, 0]} for s in specs}
    for d in dumps:
        base = {s: score(d, s, split) for s in ("vector", "bm25")}
        best = max(base["vector"][0], base["bm25"][0])
        cells = []
        for s in specs:
            r1, mrr = score(d, s, split, follows[s])
            worst[s] = min(worst[s], r1 - best)
            cells.append(f"{r1:.3f} / {mrr:.3f}{'' if r1 >= best - 0.005 else ' ✗'}")
        print(f"| {d['name']} | {base['vector'][0]:.3f} | {base['bm25'][0]:.3f} | " + " | ".join(cells) + " |",
              flush=True)
    print("| worst margin over the best single | | | " + " | ".join(f"{worst[s]:+.3f}" for s in specs) + " |")
    print("| top-1s disagree, only the vectors right: fused follows | | | " + " | ".join(
        "{} of {}".format(*follows[s]["vector"]) for s in specs) + " |")
    print("| top-1s disagree, only BM25 right: fused follows | | | " + " | ".join(
        "{} of {}".format(*follows[s]["bm25"]) for s in specs) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="write every dev set's candidates to .cache/fusion/")
    d.add_argument("--cache-dir", default=str(ROOT / ".cache" / "eval"))
    d.add_argument("--only", default=None)
    g = sub.add_parser("grid", help="compare fusion specs offline on the dumps")
    g.add_argument("specs", nargs="+")
    g.add_argument("--split", choices=("even", "odd", "all"), default="all")
    g.add_argument("--only", default=None)
    args = ap.parse_args()
    if args.cmd == "dump":
        dump(args.cache_dir, args.only)
    else:
        grid(args.specs, args.split, args.only)


if __name__ == "__main__":
    main()
