"""Plain-text loading: encodings, refusals with a useful message, folder expansion.

Nothing here imports unstructured (that lives in test_loaders_unstructured.py).
"""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from ragqa.errors import InputError
from ragqa.loaders import SUPPORTED_SUFFIXES, decode_text, expand_paths, load_documents, load_file

ZH = "熊猫是中国特有的动物。它们主要吃竹子，每天要吃十几个小时！\n第二段：成都有熊猫基地。"


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- encodings


@pytest.mark.parametrize(
    "label, data",
    [
        ("utf-8", ZH.encode("utf-8")),
        ("utf-8 with BOM", codecs.BOM_UTF8 + ZH.encode("utf-8")),
        ("gbk", ZH.encode("gbk")),
        ("gb18030", ZH.encode("gb18030")),
        ("utf-16 with BOM (little endian)", ZH.encode("utf-16")),
        ("utf-16 with BOM (big endian)", codecs.BOM_UTF16_BE + ZH.encode("utf-16-be")),
    ],
)
def test_text_file_encodings_are_decoded(tmp_path: Path, label: str, data: bytes) -> None:
    path = write(tmp_path / "doc.txt", data)
    docs = load_file(path)
    assert len(docs) == 1
    assert docs[0].page_content == ZH  # no BOM character, no mojibake
    assert docs[0].metadata["source"] == str(path)


def test_gb18030_only_characters_survive(tmp_path: Path) -> None:
    # 𠮷 (U+20BB7) is not in GBK; only GB18030 encodes it
    text = "吉野家的“𠮷”字不是“吉”。"
    with pytest.raises(UnicodeEncodeError):
        text.encode("gbk")
    path = write(tmp_path / "rare.md", text.encode("gb18030"))
    assert load_file(path)[0].page_content == text


def test_decode_text_gbk_doctest_example() -> None:
    assert decode_text("中文".encode("gbk")) == "中文"


# Legacy encodings, a few sentences and one short line each. Before ragqa preferred CP1252 for
# Western text, charset_normalizer read these as CP1250/CP1257/CP437 ("déjà" -> "déją", "“hello”"
# -> "УhelloФ") and GB18030 read Korean EUC-KR as Chinese ("서울은" -> "辑匡篮").
LEGACY = [
    ("cp1252", "fr", "Il était déjà tard quand nous sommes arrivés à la gare. « Ça coûte 12 € », m’a dit "
               "l’employé avec un “sourire” poli. Où est passé le train de 18 h ?"),
    ("cp1252", "fr-short", "C’était déjà vu, “hélas”."),
    ("cp1252", "de", "Die Größe der Straße überrascht viele Besucher. „Schöne Grüße aus München“, schrieb sie – "
               "und fügte hinzu: Das Frühstück kostet nur 9 €."),
    ("cp1252", "de-short", "Schöne Grüße aus Köln – 5 €."),
    ("cp1252", "es", "¿Dónde está la estación? Mañana iremos a Córdoba con el niño. El billete cuesta 25 € y "
               "“no incluye” el almuerzo… ¡Qué lástima!"),
    ("cp1252", "es-short", "¿Qué tal? Mañana, señor."),
    ("cp1252", "en-quotes", "“Hello,” she said. “It’s a lovely day — isn’t it?”"),
    ("cp1252", "en-short", "“hello”"),
    ("cp1252", "de-signs", "Temperatur: 20 °C ± 2 °C, Fläche 3 m²."),
    ("latin-1", "fr", "Le café est très chaud ce matin. Ça va ? Où est la bibliothèque du lycée ? Les élèves "
                "préfèrent le thé glacé, naïvement."),
    ("latin-1", "fr-short", "déjà vu à Noël"),
    ("latin-1", "sv", "Vi åker till Göteborg på fredag och äter smörgåsar."),
    ("cp1251", "ru", "Москва — столица России. Сегодня в городе тепло и солнечно, а вечером обещают дождь. "
               "«Мы встретимся у метро», — сказал он."),
    ("cp1251", "ru-short", "Привет, как дела?"),
    ("shift_jis", "ja", "東京は日本の首都です。今日は天気が良くて、公園を散歩しました。桜がとてもきれいでした。"),
    ("shift_jis", "ja-short", "こんにちは、世界。"),
    ("shift_jis", "ja-katakana", "東京タワー"),
    ("euc-jp", "ja", "今日はいい天気ですね。散歩に行きましょう。"),
    ("euc-kr", "ko", "서울은 대한민국의 수도입니다. 오늘은 날씨가 좋아서 공원에서 산책을 했습니다. 벚꽃이 정말 예뻤어요."),
    ("euc-kr", "ko-short", "안녕하세요, 세계."),
    ("big5", "zh-hant", "臺灣的夜市非常熱鬧，許多觀光客喜歡在這裡品嚐小吃。我們昨天晚上去了士林夜市，買了珍珠奶茶和雞排。"),
    ("big5", "zh-hant-short", "今天天氣很好。"),
    ("gbk", "zh-hans", "北京是中国的首都。今天天气很好，我们去公园散步了。晚上吃了烤鸭和饺子。"),
    ("gbk", "zh-hans-short", "你好，世界。"),
    ("utf-16", "fr", "Il était déjà tard. « Ça coûte 12 € », m’a dit l’employé."),
    ("utf-16", "ru-short", "Привет, как дела?"),
]


@pytest.mark.parametrize("encoding, label, text", LEGACY, ids=[f"{e}-{label}" for e, label, _ in LEGACY])
def test_legacy_encodings_decode_exactly(tmp_path: Path, encoding: str, label: str, text: str) -> None:
    path = write(tmp_path / "legacy.txt", text.encode(encoding))
    assert load_file(path)[0].page_content == text


# Encodings whose bytes also read as plausible text in another one: ragqa may decode them, but if
# it is not sure it says so (an InputError naming the file), never returns mojibake.
AMBIGUOUS = [
    ("cp1254", "Türkiye’de yaşıyorum ve İstanbul’u çok seviyorum."),
    ("cp1254", "Şişli’de oturuyoruz."),
    ("cp1250", "Zażółć gęślą jaźń."),
    ("iso8859_15", "L'œuvre coûte 10 €."),
    ("euc-jp", "日本語の文章です。"),  # these bytes are Big5 too ("中華民國" likewise)
    ("big5", "中華民國"),
]


@pytest.mark.parametrize("encoding, text", AMBIGUOUS, ids=[f"{e}-{n}" for n, (e, _) in enumerate(AMBIGUOUS)])
def test_ambiguous_text_is_decoded_exactly_or_refused(tmp_path: Path, encoding: str, text: str) -> None:
    path = write(tmp_path / "doc.txt", text.encode(encoding))
    try:
        decoded = load_file(path)[0].page_content
    except InputError as exc:
        message = str(exc)
        assert str(path) in message and "UTF-8" in message and "\n" not in message
    else:
        assert decoded == text


def test_unsure_encoding_names_the_candidates(tmp_path: Path) -> None:
    path = write(tmp_path / "kurz.txt", "日本語の文章です。".encode("euc-jp"))
    with pytest.raises(InputError) as err:
        load_file(path)
    assert str(err.value) == (
        f"{path}: cannot tell the text encoding for sure (euc_jp or big5); save the file as UTF-8 and try again"
    )


# --------------------------------------------------------------------------- refusals


def test_binary_file_is_refused_and_named(tmp_path: Path) -> None:
    path = write(tmp_path / "data.txt", b"\x00\x01\x02\x03binary\x00\xff\xfe\x00" * 50)
    with pytest.raises(InputError) as err:
        load_documents([path])
    assert str(path) in str(err.value)
    assert "binary" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"   \n\t\r\n  "], ids=["empty", "whitespace-only"])
def test_empty_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path / "empty.txt", content)
    with pytest.raises(InputError) as err:
        load_documents([path])
    assert "empty" in str(err.value)
    assert str(path) in str(err.value)


def test_whitespace_only_utf16_file_is_refused_as_empty(tmp_path: Path) -> None:
    path = write(tmp_path / "blank16.txt", "  \n \n".encode("utf-16"))
    with pytest.raises(InputError, match="empty"):
        load_documents([path])


def test_unsupported_extension_lists_supported_types(tmp_path: Path) -> None:
    path = write(tmp_path / "slides.key", b"PK\x03\x04")
    with pytest.raises(InputError) as err:
        load_documents([path])
    message = str(err.value)
    assert ".key" in message and str(path) in message
    for suffix in SUPPORTED_SUFFIXES:
        assert suffix in message


def test_file_without_extension_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "README", "hello")
    with pytest.raises(InputError, match="unsupported file type"):
        load_documents([path])


def test_missing_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nope.txt"
    with pytest.raises(InputError) as err:
        load_documents([path])
    assert str(path) in str(err.value)
    assert "no such file" in str(err.value)


def test_pdf_that_is_not_a_pdf_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "fake.pdf", "this is just text pretending to be a PDF")
    with pytest.raises(InputError) as err:
        load_documents([path])
    assert "not a PDF" in str(err.value)
    assert str(path) in str(err.value)


def test_docx_that_is_not_a_zip_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "fake.docx", "plain text, not a word document")
    with pytest.raises(InputError, match=r"not a \.docx"):
        load_documents([path])


# --------------------------------------------------------------------------- folders


def test_folder_expands_recursively_skipping_hidden_and_unsupported(tmp_path: Path) -> None:
    root = tmp_path / "notes"
    a = write(root / "a.txt", "甲。")
    b = write(root / "sub" / "b.md", "乙。")
    c = write(root / "sub" / "deeper" / "C.HTML", "<p>丙。</p>")  # suffix matched case-insensitively
    write(root / ".hidden.txt", "hidden file")
    write(root / ".git" / "x.txt", "hidden folder")
    write(root / "sub" / ".cache" / "y.md", "hidden folder below")
    write(root / "slides.key", b"PK\x03\x04")
    write(root / "sub" / "setup.exe", b"MZ")
    assert expand_paths([root]) == sorted([a, b, c])


def test_hidden_folder_named_directly_is_still_read(tmp_path: Path) -> None:
    root = tmp_path / ".notes"
    a = write(root / "a.txt", "甲。")
    assert expand_paths([root]) == [a]


def test_folder_without_supported_files_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "apps"
    write(root / "a.exe", b"MZ")
    with pytest.raises(InputError) as err:
        expand_paths([root])
    assert "no supported files" in str(err.value)
    assert ".txt" in str(err.value)


def test_same_file_given_twice_is_loaded_once(tmp_path: Path) -> None:
    a = write(tmp_path / "a.txt", "甲。")
    (tmp_path / "sub").mkdir()
    docs = load_documents([a, tmp_path / "sub" / ".." / "a.txt", tmp_path])
    assert [d.page_content for d in docs] == ["甲。"]


def test_load_documents_keeps_order_and_sources(tmp_path: Path) -> None:
    a = write(tmp_path / "a.txt", "第一个文件。")
    b = write(tmp_path / "b.md", "# Second\n\nEnglish text.")
    docs = load_documents([b, a])
    assert [(d.metadata["source"], d.page_content) for d in docs] == [
        (str(b), "# Second\n\nEnglish text."),
        (str(a), "第一个文件。"),
    ]
