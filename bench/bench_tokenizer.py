"""The keyword tokenizer: jieba's words through its dictionary as a trie file (ragqa/segmenter.py)
against jieba loading its own dictionary, in one run.

1. **Same words.** ``ragqa.words.tokenize`` with the trie, and with jieba's own dictionary (what
   the code before ran), on every context of the shared CMRC2018, DRCD and SQuAD sets: chunks
   whose words are identical, per set, the differing ones listed; the time to segment them all.
2. **Start-up**, this tree against ``--before`` (a temporary git worktree, bench_startup.py's),
   alternating run by run: the tokenizer's ready time (a fresh process imports ragqa.words and
   tokenizes a Chinese question, timed inside it) and the wall of a warm
   ``ragqa ask --kb NAME QUESTION --dry-run`` on a small Chinese KB (corpora/zh); medians, ratios.
3. ``--candidates PYTHON``: other jieba packages installed in that interpreter's environment
   (jieba_fast_dat, jieba_next, jieba_pyfast, jieba3), each against jieba 0.42.1 there: ready
   time in a fresh process and the share of contexts segmented the same.

    .venv/bin/python bench/bench_tokenizer.py --before b29b638 --runs 10
    .venv/bin/python bench/bench_tokenizer.py --before b29b638 --candidates /tmp/tokvenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_startup import REPO, timed, two_trees

EVAL = REPO.parent / "shared" / "eval"
SETS = {"CMRC2018 trial": "zh_mrc/cmrc2018_trial.squad.json", "DRCD dev": "zh_mrc/DRCD_dev.json",
        "SQuAD 1.1 dev": "en_mrc/squad_dev_v1.1.json"}
QUESTION = "青岚镇的开茶节是哪一天？"
READY = ("import time; t = time.perf_counter()\n"
         "from ragqa.words import tokenize\n"
         "tokenize({q!r})\n"
         "print(time.perf_counter() - t)")


def contexts() -> dict[str, list[str]]:
    out = {}
    for name, rel in SETS.items():
        if (EVAL / rel).is_file():
            data = json.loads((EVAL / rel).read_text("utf-8"))["data"]
            out[name] = [p["context"] for art in data for p in art["paragraphs"]]
    return out


def same_words(texts: dict[str, list[str]]) -> None:
    import jieba

    from ragqa import segmenter, words

    trie = segmenter._load_or_build(segmenter._trie_path())  # before jieba's own dictionary loads
    assert isinstance(trie, segmenter.TrieTokenizer), trie
    jieba.setLogLevel(40)
    jieba.initialize()
    results: dict[str, dict[str, list[list[str]]]] = {}
    seconds: dict[str, float] = {}
    for label, seg in (("jieba's own dictionary", jieba), ("trie", trie)):
        words._segmenter_ = seg
        t = time.perf_counter()
        results[label] = {name: [words.tokenize(c) for c in cs] for name, cs in texts.items()}
        seconds[label] = time.perf_counter() - t
    old, new = results["jieba's own dictionary"], results["trie"]
    print("| set | contexts | identical words | differing |")
    print("|---|---|---|---|")
    for name, cs in texts.items():
        differ = [i for i, (a, b) in enumerate(zip(old[name], new[name])) if a != b]
        print(f"| {name} | {len(cs)} | {len(cs) - len(differ)} ({(len(cs) - len(differ)) / len(cs):.1%}) | {len(differ)} |")
        for i in differ[:20]:
            a, b = set(old[name][i]), set(new[name][i])
            print(f"    {name} #{i}: only jieba {sorted(a - b)[:8]}, only trie {sorted(b - a)[:8]}")
    chars = sum(len(c) for cs in texts.values() for c in cs)
    own_s, trie_s = seconds["jieba's own dictionary"], seconds["trie"]
    print(f"\nsegmenting all {chars:,} characters: jieba's own dictionary {own_s:.1f} s (already loaded), "
          f"trie {trie_s:.1f} s\n")


def startup(before: str, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="ragqa-tokenizer-") as tmp, two_trees(before, tmp) as trees:
        py = [sys.executable, "-m", "ragqa"]
        subprocess.run([*py, "index", str(REPO / "corpora" / "zh"), "--kb", "tok"], env=trees["after"],
                       cwd=tmp, check=True, capture_output=True)
        ready = [sys.executable, "-c", READY.format(q=QUESTION)]
        ask = [*py, "ask", "--kb", "tok", QUESTION, "--dry-run"]

        def ready_s(env: dict[str, str]) -> float:
            proc = subprocess.run(ready, env=env, cwd=tmp, capture_output=True, text=True, check=True)
            return float(proc.stdout.split()[-1])

        for env in trees.values():  # warm: jieba's marshal cache, the trie file, idf, models, page cache
            ready_s(env)
            timed(ask, env, tmp)
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(runs):
            for tree, env in trees.items():
                times.setdefault(("tokenizer ready (in process)", tree), []).append(ready_s(env))
                times.setdefault(("ask --kb --dry-run (wall)", tree), []).append(timed(ask, env, tmp))
    print(f"| {runs} runs each, medians | before s | after s | after/before | saved s |")
    print("|---|---|---|---|---|")
    for label in dict.fromkeys(k for k, _ in times):
        b, a = statistics.median(times[(label, "before")]), statistics.median(times[(label, "after")])
        print(f"| {label} | {b:.3f} | {a:.3f} | {a / b:.2f} | {b - a:.3f} |")
    print()


CANDIDATES = {
    "jieba 0.42.1": "import jieba; jieba.setLogLevel(40); f = jieba.lcut_for_search",
    "jieba_fast_dat": "import jieba_fast_dat as j; j.setLogLevel(40); f = j.lcut_for_search",
    "jieba_next": "import jieba_next as j; f = j.lcut_for_search",
    # no cut_for_search of its own: jieba's search mode over its cut and dictionary
    "jieba_pyfast": ("import jieba_pyfast as j\n"
                     "def f(s):\n"
                     "    out = []\n"
                     "    for w in j.cut(s):\n"
                     "        for n in (2, 3):\n"
                     "            if len(w) > n:\n"
                     "                out += [w[i:i + n] for i in range(len(w) - n + 1) if j._dt.FREQ.get(w[i:i + n])]\n"
                     "        out.append(w)\n"
                     "    return out"),
    "jieba3": "from jieba3 import jieba3 as _J; f = _J().cut_query",
}

CANDIDATE_CHILD = r'''
import json, re, statistics, subprocess, sys, time
TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+|[A-Za-z0-9]+")
name, code, sets = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
ready = ("import time, logging; logging.disable(logging.CRITICAL); t = time.perf_counter()\n" + code
         + "\nf('熊猫住在四川的山里'); print(time.perf_counter() - t)")
subprocess.run([sys.executable, "-c", ready], capture_output=True)  # builds its cache, if any
ts = []
for _ in range(5):
    r = subprocess.run([sys.executable, "-c", ready], capture_output=True, text=True)
    if r.returncode:
        print(json.dumps({"error": (r.stderr.strip().splitlines() or ["?"])[-1]})); sys.exit()
    ts.append(float(r.stdout.split()[-1]))
def words(f, text):
    return [t for m in TOKEN.finditer(text) if not m.group()[0].isascii() for t in f(m.group()) if t.strip()]
ns = {}; exec(CANDIDATES_JIEBA, ns); ref = ns["f"]
ns = {}; exec(code, ns); f = ns["f"]
same = {}
for set_name, path in sets.items():
    data = json.load(open(path, encoding="utf-8"))["data"]
    cs = [p["context"] for a in data for p in a["paragraphs"]]
    same[set_name] = [sum(words(f, c) == words(ref, c) for c in cs), len(cs)]
print(json.dumps({"ready": statistics.median(ts), "same": same}))
'''


def candidates(python: str) -> None:
    sets = {n: str(EVAL / rel) for n, rel in SETS.items() if (EVAL / rel).is_file()}
    child = CANDIDATE_CHILD.replace("CANDIDATES_JIEBA", repr(CANDIDATES["jieba 0.42.1"]))
    print(f"| package ({python}) | ready s (fresh process) | " + " | ".join(f"same as jieba: {n}" for n in sets) + " |")
    print("|---|---|" + "---|" * len(sets))
    for name, code in CANDIDATES.items():
        proc = subprocess.run([python, "-c", child, name, code, json.dumps(sets)], capture_output=True, text=True,
                              check=False)
        try:
            r = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            r = {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
        if "error" in r:
            print(f"| {name} | {r['error'][:80]} |" + " |" * len(sets))
            continue
        cells = " | ".join(f"{a}/{n} ({a / n:.1%})" for a, n in r["same"].values())
        print(f"| {name} | {r['ready']:.3f} | {cells} |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="the commit before the trie (or any git revision)")
    ap.add_argument("--runs", type=int, default=10, help="start-up runs per version")
    ap.add_argument("--candidates", metavar="PYTHON", default=None,
                    help="also measure the other jieba packages installed for this interpreter")
    args = ap.parse_args()
    texts = contexts()
    if texts:
        same_words(texts)
    else:
        print(f"no shared eval sets under {EVAL}: skipping the same-words check\n", file=sys.stderr)
    startup(args.before, args.runs)
    if args.candidates:
        candidates(args.candidates)


if __name__ == "__main__":
    main()
