"""Settings: defaults, then TOML file, then RAGQA_* env, then flags (highest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragqa.config import Settings, default_cache_dir, load_settings
from ragqa.errors import ConfigError


@pytest.fixture
def toml(tmp_path: Path):
    def write(text: str) -> Path:
        path = tmp_path / "ragqa.toml"
        path.write_text(text, "utf-8")
        return path

    return write


def test_defaults() -> None:
    s = load_settings()
    assert (s.chunk_size, s.chunk_overlap) == (600, 100)
    assert s.k == 4
    assert s.temperature == 0.2
    assert s.top_k == 40
    assert s.top_p == 0.9
    assert s.repeat_penalty == 1.1
    assert s.max_new_tokens == 400
    assert (s.model, s.embedding_model, s.chat_format, s.chain) == ("smollm2", "multilingual-e5-small", "auto", "stuff")


def test_default_cache_dir_follows_xdg(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "ragqa"
    assert load_settings().cache_dir == tmp_path / "xdg" / "ragqa"


def test_env_overrides_default(monkeypatch) -> None:
    monkeypatch.setenv("RAGQA_K", "7")
    monkeypatch.setenv("RAGQA_CACHE_DIR", "/tmp/somewhere")
    s = load_settings()
    assert s.k == 7 and s.cache_dir == Path("/tmp/somewhere")


def test_toml_file_overrides_default(toml) -> None:
    s = load_settings(toml('k = 9\nchunk_size = 300\nchain = "refine"\n'))
    assert (s.k, s.chunk_size, s.chain) == (9, 300, "refine")
    assert s.temperature == 0.2  # untouched keys keep their defaults


def test_config_file_from_env(toml, monkeypatch) -> None:
    monkeypatch.setenv("RAGQA_CONFIG", str(toml("k = 11\n")))
    assert load_settings().k == 11


def test_env_overrides_toml_and_flag_overrides_env(toml, monkeypatch) -> None:
    path = toml("k = 9\ntemperature = 0.5\n")
    monkeypatch.setenv("RAGQA_K", "7")
    assert load_settings(path).k == 7
    assert load_settings(path).temperature == 0.5
    assert load_settings(path, k=3).k == 3


def test_flag_none_means_not_given(monkeypatch) -> None:
    monkeypatch.setenv("RAGQA_K", "7")
    assert load_settings(k=None).k == 7


def test_config_file_does_not_leak_into_later_settings(toml) -> None:
    load_settings(toml("k = 9\n"))
    assert load_settings().k == 4
    assert Settings().k == 4


@pytest.mark.parametrize("size, overlap", [(100, 100), (200, 300)])
def test_overlap_not_below_size_is_a_one_line_config_error(size: int, overlap: int) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(chunk_size=size, chunk_overlap=overlap)
    message = str(err.value)
    assert "\n" not in message
    assert "chunk_overlap" in message and "chunk_size" in message


def test_overlap_from_env_is_checked_too(monkeypatch) -> None:
    monkeypatch.setenv("RAGQA_CHUNK_SIZE", "100")
    with pytest.raises(ConfigError, match="chunk_overlap"):
        load_settings()


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path / "nope.toml")
    assert "nope.toml" in str(err.value) and "does not exist" in str(err.value)


def test_malformed_toml_is_a_config_error(toml) -> None:
    path = toml("k = = 3\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_unknown_key_in_toml_is_named(toml) -> None:
    with pytest.raises(ConfigError, match="chunksize"):
        load_settings(toml("chunksize = 300\n"))


@pytest.mark.parametrize(
    "overrides, field",
    [({"k": 0}, "k"), ({"top_p": 1.5}, "top_p"), ({"chain": "map"}, "chain"), ({"lang": "fr"}, "lang"),
     ({"max_new_tokens": 5000}, "max_new_tokens")],
)
def test_invalid_values_are_one_line_config_errors_naming_the_field(overrides, field) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(**overrides)
    assert field in str(err.value) and "\n" not in str(err.value)


def test_bad_env_value_is_a_config_error(monkeypatch) -> None:
    monkeypatch.setenv("RAGQA_K", "many")
    with pytest.raises(ConfigError, match="k"):
        load_settings()
