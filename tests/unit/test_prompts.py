"""Instruction templates in prompts/ and question-language detection."""

from __future__ import annotations

import string

import pytest

from ragqa import prompts
from ragqa.errors import ConfigError
from ragqa.prompts import LANGS, PROMPT_VARIABLES, detect_lang, fill_prompt, load_prompt, prompts_dir


def test_every_template_file_is_known() -> None:
    files = sorted(p.name for p in prompts_dir().glob("*.txt"))
    expected = sorted(f"{name}.{lang}.txt" for name in PROMPT_VARIABLES for lang in LANGS)
    assert files == expected


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("name", sorted(PROMPT_VARIABLES))
def test_template_loads_with_exactly_its_variables(name: str, lang: str) -> None:
    text = load_prompt(name, lang)
    used = {field for _, field, _, _ in string.Formatter().parse(text) if field}
    assert used == PROMPT_VARIABLES[name]
    values = {v: f"<<{v}>>" for v in PROMPT_VARIABLES[name]}
    filled = fill_prompt(name, lang, **values)
    for marker in values.values():
        assert marker in filled
    assert "{" not in filled.replace("<<", "").replace(">>", "")


@pytest.mark.parametrize("name", sorted(PROMPT_VARIABLES))
def test_chinese_templates_are_in_chinese_and_english_in_english(name: str) -> None:
    assert detect_lang(load_prompt(name, "zh")) == "zh"
    assert detect_lang(load_prompt(name, "en")) == "en"


def test_unknown_prompt_or_language_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown prompt"):
        load_prompt("qa_map_reduce", "zh")
    with pytest.raises(ConfigError, match="unknown prompt language"):
        load_prompt("qa_stuff", "fr")


def test_template_with_wrong_variables_is_refused(tmp_path, monkeypatch) -> None:
    (tmp_path / "qa_stuff.zh.txt").write_text("资料：{context}\n问题：{query}\n", "utf-8")
    monkeypatch.setattr(prompts, "prompts_dir", lambda: tmp_path)
    load_prompt.cache_clear()
    try:
        with pytest.raises(ConfigError) as err:
            load_prompt("qa_stuff", "zh")
        assert "query" in str(err.value) and "question" in str(err.value)
    finally:
        load_prompt.cache_clear()


@pytest.mark.parametrize(
    "text, lang",
    [
        ("熊猫吃什么？", "zh"),
        ("What do pandas eat?", "en"),
        ("GPU 是什么", "zh"),
        ("合同的有效期是多久？", "zh"),
        ("Summarize the report about 熊猫 please", "en"),
        ("2024", "en"),
        ("", "en"),
    ],
)
def test_detect_lang(text: str, lang: str) -> None:
    assert detect_lang(text) == lang
