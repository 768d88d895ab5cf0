"""Search-style retrieval sets for `ragqa eval`, built from the permissively licensed data in ../shared/eval.

MRC questions reuse their passage's words, so BM25 looks better on them than on the way people
search. This script writes query -> document sets in ragqa's JSONL format
(`{"query": .., "document": .., "answers": [..]}`, one line per query):

- `csl_titles.jsonl`: CSL paper titles as queries, their abstracts as documents (zh_sum/csl_ts_dev.tsv,
  Apache-2.0; 1,000 abstracts, short queries with partial word overlap).
- `csl_title_keywords.jsonl`: the same, each title rewritten to 2-4 keywords (as below).
- `vcsum_headlines.jsonl`: VCSum meeting-segment headlines ("区块链的应用价值", "工作和生活的平衡") as
  queries, the segments' transcripts as documents (zh_sum/vcsum_short_dev.compact.jsonl, MIT; 135
  topic-style queries that mostly paraphrase spoken text); `vcsum_summaries.jsonl`: the same
  documents, each found by its ~140-character written summary (an abstractive paraphrase).
- `medical_titles.jsonl`: real questions people typed into a Chinese health Q&A site ("高血压能喝黑茶吗？",
  "得肝硬化怎么办呢?") as queries, the doctors' answers as documents (Toyhom/Chinese-medical-dialogue-data
  on GitHub, MIT; not in ../shared/eval: fetch its internal-medicine sample, below, into
  .cache/raw/). Short colloquial search questions over passages that repeat the query's words
  among many that share its topic: the style on which vector search stays far above BM25 and rank
  fusion falls below vector. 1,500 queries, each department in turn (a fixed seed), titles and
  answers that occur once only, answers of 40 characters or more.
- `cmrc2018_trial_keywords.jsonl`, `drcd_dev200_keywords.jsonl`, `squad_dev200_keywords.jsonl`: the
  MRC questions rewritten the way people type into a search box: function and question words
  dropped, 2-4 content words kept (names, numbers and nouns first), in their original order. The
  documents (and their order) are exactly those `ragqa eval` reads from the SQuAD file with the
  same `--max-contexts`, so the keyword set reuses that set's cached index.

    .venv/bin/python bench/build_search_sets.py                # -> .cache/search_sets/
    .venv/bin/python bench/build_search_sets.py --out /tmp/sets

The medical set needs one file of https://github.com/Toyhom/Chinese-medical-dialogue-data, the
internal-medicine sample `样例_内科5000-6000.csv` (7,644 rows, GB18030), saved as
.cache/raw/toyhom_im_sample.csv (or `--medical-csv PATH`); without it the set is skipped.

The rewriting is rule-based (jieba part-of-speech tags for Chinese, a stopword list for English)
and fixed: nothing in it was tuned on retrieval results.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT.parent / "shared" / "eval"
OUT = ROOT / ".cache" / "search_sets"  # git-ignored: the data stay out of the repository
MRC_SETS = {  # output name: (SQuAD file, max contexts)
    "cmrc2018_trial_keywords.jsonl": (EVAL / "zh_mrc/cmrc2018_trial.squad.json", None),
    "drcd_dev200_keywords.jsonl": (EVAL / "zh_mrc/DRCD_dev.json", 200),
    "squad_dev200_keywords.jsonl": (EVAL / "en_mrc/squad_dev_v1.1.json", 200),
}
MAX_WORDS = 4

# jieba part-of-speech tags, most searchable first: names and titles, numbers and times, nouns, verbs/adjectives
_ZH_PRIORITY = [
    ("nr", "nrt", "nrfg", "ns", "nt", "nz", "eng", "title"),
    ("m", "t", "mq"),
    ("n", "ng", "vn", "an", "j", "l", "i", "s"),
    ("v", "a", "ad", "vd", "b", "z"),
]
_ZH_DROP = frozenset(
    "什么 什麼 哪 哪里 哪裡 哪个 哪個 哪些 哪一 哪位 哪年 谁 誰 多少 几 幾 怎么 怎麼 怎样 怎樣 如何 为什么 為什麼 为何 為何 "
    "是 有 的 了 吗 嗎 呢 被 在 为 為 把 等 及 与 與 和 又 也 都 还 還 会 會 能 可以 什么样 甚麼 甚么 何 何时 何時 时候 時候 "
    "多久 多长 多長 多大 多高 多远 哪种 哪種 其 其中 这 這 那 该 該 此 之 于 於 由 以 将 將 所 而 并 並 则 則 就 才 个 個 "
    "位 种 種 名 称为 稱為 叫 叫做 指 哪儿 第几 第幾".split()
)
_EN_STOP = frozenset(
    "a an the and or but of in on at to for from by with about as into onto over under after before between "
    "during through is are was were be been being do does did has have had having can could would should will "
    "shall may might must what which who whom whose when where why how that this these those there here it its "
    "he she they them his her their our we us you your i me my name named called kind type sort many much "
    "long often some any one ones other than then also not no so such very most more least less percent "
    "year years time times according did".split()
)


def zh_keywords(question: str) -> str:
    """A Chinese question as 2-4 search keywords: the question and function words dropped, names,
    numbers and nouns first; a single character jieba split off a kept word stays attached to it.

    >>> zh_keywords("《战国无双3》是由哪两个公司合作开发的？")
    '战国无双3 公司 合作开发'
    >>> zh_keywords("蒙泰罗在2005年美国大奖赛上获得第几名？")
    '蒙泰罗 2005 美国 大奖赛'
    """
    import jieba
    import jieba.posseg as pseg

    jieba.setLogLevel(60)
    tokens: list[tuple[str, str]] = []  # (word, tag), in question order
    for part in re.split(r"(《[^》]+》)", question):
        if part.startswith("《") and part.endswith("》"):
            tokens.append((part[1:-1], "title"))
        else:
            tokens.extend((w.word.strip(), w.flag) for w in pseg.lcut(part))

    def content(word: str, tag: str) -> bool:
        if not word or re.fullmatch(r"[\W_]+", word) or word in _ZH_DROP or re.search("[几幾哪何谁誰]|多少", word):
            return False
        if tag.startswith("m"):
            return bool(re.search(r"[0-9]", word))  # a year or a count, not 一种 / 两个
        return tag == "title" or any(tag in tags for tags in _ZH_PRIORITY)

    keep = [content(w, t) for w, t in tokens]
    ranked = [i for tags in _ZH_PRIORITY for i, (w, t) in enumerate(tokens)
              if keep[i] and t in tags and (len(w) > 1 or t in ("title", "m"))]
    chosen = set(ranked[:MAX_WORDS])
    if len(chosen) < 2:  # too few: any content word, single characters included
        chosen |= {i for i in range(len(tokens)) if keep[i]}
    for i in sorted(chosen):  # re-attach characters jieba split off a kept word (蒙 + 泰罗)
        for j in (i - 1, i + 1):
            if 0 <= j < len(tokens) and len(tokens[j][0]) == 1 and keep[j]:
                chosen.add(j)
    out, prev = [], -2
    for i in sorted(chosen):
        glued = i == prev + 1 and min(len(tokens[i][0]), len(tokens[prev][0])) == 1 and "title" not in (
            tokens[i][1], tokens[prev][1])
        if glued:
            out[-1] += tokens[i][0]
        elif tokens[i][0] not in out:
            out.append(tokens[i][0])
        prev = i
    return " ".join(out) or question


def en_keywords(question: str) -> str:
    """An English question as 2-4 search keywords.

    >>> en_keywords("Which NFL team represented the AFC at Super Bowl 50?")
    'NFL AFC Super Bowl'
    """
    tokens = [(i, t) for i, t in enumerate(re.findall(r"[A-Za-z0-9][A-Za-z0-9'\-]*", question))]
    content = [(i, t) for i, t in tokens if t.lower() not in _EN_STOP]
    names = [(i, t) for i, t in content if i > 0 and (t[0].isupper() or t[0].isdigit())]
    rest = sorted((x for x in content if x not in names), key=lambda x: -len(x[1]))
    chosen = sorted((names + rest)[:MAX_WORDS])
    return " ".join(t for _, t in chosen) or question


def keywords(question: str) -> str:
    return zh_keywords(question) if re.search(r"[\u4e00-\u9fff]", question) else en_keywords(question)


def squad_rows(path: Path, max_contexts: int | None) -> list[dict]:
    """The questions of a SQuAD file as keyword queries, documents in `ragqa eval`'s order."""
    sys.path.insert(0, str(ROOT))
    from ragqa.evaluation import load_squad

    contexts, items = load_squad(path, max_contexts)
    rows: list[dict] = []
    used = set()
    for it in items:
        rows.append({"id": it.qid, "query": keywords(it.question), "question": it.question,
                     "document": contexts[it.context_id], "answers": it.answers})
        used.add(it.context_id)
    missing = [c for i, c in enumerate(contexts) if i not in used]
    if missing:
        raise SystemExit(f"{path}: {len(missing)} contexts have no question; the document order would differ")
    return rows


def csl_rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [{"id": f"csl-{n}", "query": title.strip(), "document": abstract.strip()}
                for n, (_, abstract, title) in enumerate(reader)]


def vcsum_rows(path: Path, field: str = "headline") -> list[dict]:
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    return [{"id": f"vcsum-{r['id']}", "query": r[field].strip(), "document": r["context"].strip()} for r in rows]


MEDICAL_CSV = ROOT / ".cache" / "raw" / "toyhom_im_sample.csv"
MEDICAL_QUERIES = 1500


def medical_rows(path: Path, n: int = MEDICAL_QUERIES, seed: int = 0) -> list[dict]:
    """Title -> answer pairs from the medical dialogue CSV (department, title, ask, answer): titles
    and answers that occur once only, answers of 40 characters or more, departments taken in turn."""
    import io
    import random
    from collections import Counter, defaultdict

    rows = [(r["department"], r["title"].strip(), r["answer"].strip())
            for r in csv.DictReader(io.StringIO(path.read_bytes().decode("gb18030")))]
    titles, answers = Counter(r[1] for r in rows), Counter(r[2] for r in rows)
    by_department: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for r in rows:
        if titles[r[1]] == 1 and answers[r[2]] == 1 and len(r[1]) >= 4 and len(r[2]) >= 40:
            by_department[r[0]].append(r)
    rng = random.Random(seed)
    for group in by_department.values():
        rng.shuffle(group)
    picked: list[tuple[str, str, str]] = []
    while len(picked) < n and any(by_department.values()):
        for name in sorted(by_department):
            if by_department[name] and len(picked) < n:
                picked.append(by_department[name].pop())
    return [{"id": f"med-{k}", "query": title, "document": answer, "department": dept}
            for k, (dept, title, answer) in enumerate(picked)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--medical-csv", type=Path, default=MEDICAL_CSV,
                    help="the medical dialogue sample CSV (default .cache/raw/toyhom_im_sample.csv)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sets = {
        "csl_titles.jsonl": lambda: csl_rows(EVAL / "zh_sum/csl_ts_dev.tsv"),
        "csl_title_keywords.jsonl": lambda: [{**r, "query": keywords(r["query"]), "title": r["query"]}
                                             for r in csl_rows(EVAL / "zh_sum/csl_ts_dev.tsv")],
        "vcsum_headlines.jsonl": lambda: vcsum_rows(EVAL / "zh_sum/vcsum_short_dev.compact.jsonl"),
        "vcsum_summaries.jsonl": lambda: vcsum_rows(EVAL / "zh_sum/vcsum_short_dev.compact.jsonl", "summary"),
    }
    sets.update({name: (lambda p=p, m=m: squad_rows(p, m)) for name, (p, m) in MRC_SETS.items()})
    if args.medical_csv.exists():
        sets["medical_titles.jsonl"] = lambda: medical_rows(args.medical_csv)
    else:
        print(f"skipping medical_titles.jsonl: {args.medical_csv} not found (see this script's docstring)",
              file=sys.stderr)
    for name, build in sets.items():
        rows = build()
        with (args.out / name).open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{args.out / name}: {len(rows)} queries, e.g. {rows[0]['query']!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
