"""Reading speed of every supported type, and OCR accuracy and speed on scanned pages.

1. OCR: pages of real text (Simplified Chinese: CSL abstracts; Traditional Chinese: DRCD contexts;
   English: SQuAD contexts, all in ../shared/eval) are drawn at 300 dpi in Noto CJK (10 pt) and
   saved as image-only PDFs. ragqa reads each PDF (`load_file`: render, language choice, OCR on
   every core, clean-up); raw Tesseract reads the same PDF pages (rendered by pypdfium2 at
   300 dpi) one at a time with its own defaults (`tesseract page.png - -l <the languages ragqa
   chose>`: automatic page segmentation, OpenMP threads), and again with OMP_THREAD_LIMIT=1. Reported: pages/s and the character error rate against the drawn text
   (edit distance / characters, after NFKC and without whitespace, so "，" and "," are equal).
2. Other types: one realistic file per type (tests/docfixtures.py), read by ragqa's `load_file`
   and by the bare unstructured partitioner, median of --repeats runs each.

    .venv/bin/python bench/bench_formats.py [--pages 10] [--repeats 3] [--markdown]

Nothing here asserts on a timing; the numbers go to README "Supported files".
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT.parent / "shared" / "eval"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import docfixtures as fx  # noqa: E402
from docfixtures import cer, visible  # noqa: E402

PAGE_CHARS = 1100  # about half an A4 page of 10 pt text: a typical scanned page of prose


def pages_of(paragraphs: list[str], n: int) -> list[str]:
    pages, page = [], ""
    for para in paragraphs:
        page = f"{page}\n{para}" if page else para
        if len(page) >= PAGE_CHARS:
            pages.append(page[:PAGE_CHARS + 200])
            page = ""
            if len(pages) == n:
                break
    return pages


def texts(n: int) -> dict[str, tuple[list[str], bool]]:
    with open(EVAL / "zh_sum" / "csl_ts_dev.tsv", encoding="utf-8") as f:
        csl = [row[1] for row in list(csv.reader(f, delimiter="\t"))[1:]]
    drcd = json.loads((EVAL / "zh_mrc" / "DRCD_dev.json").read_text("utf-8"))
    tw = [p["context"] for a in drcd["data"] for p in a["paragraphs"]]
    squad = json.loads((EVAL / "en_mrc" / "squad_dev_v1.1.json").read_text("utf-8"))
    en = [p["context"] for a in squad["data"][::4] for p in a["paragraphs"][:2]]
    return {"Simplified Chinese": (pages_of(csl, n), False), "Traditional Chinese": (pages_of(tw, n), True),
            "English": (pages_of(en, n), False)}


def bench_ocr(n: int) -> list[dict]:
    from ragqa.loaders import load_file
    from ragqa.ocr import AUTO_CANDIDATES

    rows = []
    for name, (pages, traditional) in texts(n).items():
        with tempfile.TemporaryDirectory() as tmp:
            images = [fx.render_page(p, traditional=traditional) for p in pages]
            pdf = Path(tmp) / "scan.pdf"
            images[0].save(pdf, "PDF", resolution=300.0, save_all=True, append_images=images[1:])
            print(f"OCR {name}: {len(pages)} pages", file=sys.stderr)
            t = time.perf_counter()
            docs = load_file(pdf)
            ours_s = time.perf_counter() - t
            ours = {d.metadata["page"]: d.page_content for d in docs}
            langs = "chi_tra+eng" if traditional else "chi_sim+eng"
            assert langs in AUTO_CANDIDATES
            raw = {}
            for label, env in (("raw", {}), ("raw 1-thread", {"OMP_THREAD_LIMIT": "1"})):
                raw[label] = (*raw_tesseract(pdf, langs, Path(tmp), env),)
        ours_cer = statistics.mean(cer(ours.get(k + 1, ""), p) for k, p in enumerate(pages))
        row = {"text": name, "pages": len(pages),
               "chars/page": round(statistics.mean(len(visible(p)) for p in pages)),
               "ragqa pages/s": len(pages) / ours_s, "ragqa CER": ours_cer}
        for label, (seconds, got) in raw.items():
            row[f"{label} pages/s"] = len(pages) / seconds
            row[f"{label} CER"] = statistics.mean(cer(r, p) for r, p in zip(got, pages))
        row["ragqa / raw speed"] = row["ragqa pages/s"] / row["raw pages/s"]
        rows.append(row)
    return rows


def raw_tesseract(pdf: Path, langs: str, tmp: Path, env: dict[str, str]) -> tuple[float, list[str]]:
    """The PDF as a user would OCR it by hand: pypdfium2 renders each page at 300 dpi, the tesseract
    command reads it with its defaults, one page after another."""
    import pypdfium2 as pdfium

    texts, t = [], time.perf_counter()
    doc = pdfium.PdfDocument(str(pdf))
    for k in range(len(doc)):
        png = tmp / f"raw{k}.png"
        doc[k].render(scale=300 / 72, grayscale=True).to_pil().save(png)
        texts.append(subprocess.run(["tesseract", str(png), "-", "-l", langs], capture_output=True, text=True,
                                    check=True, env={**os.environ, **env}).stdout)
    doc.close()
    return time.perf_counter() - t, texts


def type_fixtures(root: Path) -> dict[str, Path]:
    zh = "龙井茶产于杭州西湖，每年三月采摘。明前茶最为名贵，香气清高，滋味鲜爽。"
    en = "The Quillby ferry leaves the harbour at seven every morning and returns at dusk. "
    out = {
        ".pptx": fx.pptx_file(root / "deck.pptx", [(f"第{i}页", zh * 3) for i in range(1, 31)]),
        ".xlsx": fx.xlsx_file(root / "book.xlsx", {f"Sheet{s}": [["商品", "价格", "产地", "备注"]] +
                              [[f"茶{i}", i, "杭州", "明前"] for i in range(500)] for s in range(4)}),
    }
    (root / "rows.csv").write_text("商品,价格,产地,备注\n" + "".join(f"茶{i},{i},杭州,明前\n" for i in range(2000)), "utf-8")
    out[".csv"] = root / "rows.csv"
    md = "\n\n".join(f"# 第{i}章\n\n{zh * 10}\n\n{en * 5}" for i in range(1, 31))
    for suffix in (".epub", ".odt", ".rtf", ".docx"):
        out[suffix] = fx.pandoc_file(root / f"book{suffix}", md) if suffix != ".docx" else _docx(root / "book.docx", md)
    (root / "page.html").write_text("".join(f"<h2>第{i}章</h2><p>{zh * 10}</p><p>{en * 5}</p>" for i in range(1, 31)), "utf-8")
    out[".html"] = root / "page.html"
    out[".eml"] = fx.eml_file(root / "mail.eml", "周报", (zh * 10 + "\n\n") * 20)
    fx.json_file(root / "data.json", [{"id": i, "name": f"茶{i}", "note": zh} for i in range(1000)])
    out[".json"] = root / "data.json"
    out[".pdf"] = _pdf(root / "book.pdf", zh, en)
    out[".xls"] = fx.xls_file(root / "book.xls", {f"Sheet{n}": [["商品", "价格", "产地", "备注"]] +
                              [[f"茶{i}", i, "杭州", "明前"] for i in range(500)] for n in range(4)})
    return out


def _pdf(path: Path, zh: str, en: str) -> Path:
    """30 pages with a text layer (reportlab, a CJK CID font)."""
    import textwrap

    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    c = canvas.Canvas(str(path))
    for page in range(30):
        c.setFont("STSong-Light", 11)
        y = 780
        for line in textwrap.wrap(zh * 8, 40) + textwrap.wrap(en * 6, 90):
            c.drawString(50, y, line)
            y -= 16
        c.showPage()
    c.save()
    return path


def _docx(path: Path, md: str) -> Path:
    import pypandoc

    pypandoc.convert_text(md, "docx", format="md", outputfile=str(path))
    return path


def raw_partition(path: Path):
    from unstructured.partition.auto import partition

    if path.suffix == ".json":
        return json.loads(path.read_text("utf-8"))
    return partition(filename=str(path))


def bench_types(repeats: int) -> list[dict]:
    from ragqa.loaders import _prepare_unstructured, load_file

    _prepare_unstructured()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for suffix, path in type_fixtures(Path(tmp)).items():
            print(f"reading {suffix}", file=sys.stderr)
            load_file(path)  # warm: imports
            raw_partition(path)
            ours, raw = [], []
            for _ in range(repeats):
                t = time.perf_counter()
                docs = load_file(path)
                ours.append(time.perf_counter() - t)
                t = time.perf_counter()
                raw_partition(path)
                raw.append(time.perf_counter() - t)
            chars = sum(len(d.page_content) for d in docs)
            o, r = statistics.median(ours), statistics.median(raw)
            rows.append({"type": suffix, "size KB": round(path.stat().st_size / 1024), "chars": chars,
                         "ragqa s": o, "raw s": r, "ratio": o / r, "ragqa chars/s": chars / o})
    return rows


def show(rows: list[dict], markdown: bool) -> None:
    cols = list(rows[0])

    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if v < 10 else f"{v:,.1f}" if v < 100 else f"{v:,.0f}"
        return str(v)

    if markdown:
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(fmt(r[c]) for c in cols) + " |")
    else:
        for r in rows:
            print("  ".join(f"{c}={fmt(r[c])}" for c in cols))
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=10, help="scanned pages per language")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--skip-ocr", action="store_true")
    args = ap.parse_args()
    tess = subprocess.run(["tesseract", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {tess}\n")
    if not args.skip_ocr:
        show(bench_ocr(args.pages), args.markdown)
    show(bench_types(args.repeats), args.markdown)


if __name__ == "__main__":
    main()
