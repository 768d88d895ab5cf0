"""Choosing the backend: auto-selection from the model, settings refused at the door, the API key,
and the CLI flags that reach them. No model is loaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ragqa.config import Settings, load_settings
from ragqa.errors import ConfigError, ModelError
from ragqa.llms import resolve_backend
from ragqa.models import guess_backend, resolve_hf_model


@pytest.fixture
def hf_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny-llama"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}', "utf-8")
    return folder


@pytest.fixture
def gguf_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.q4_0.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 32)
    return path


# --------------------------------------------------------------------------- auto


def test_auto_picks_the_backend_from_the_model(hf_folder: Path, gguf_file: Path) -> None:
    assert guess_backend("smollm2") == "llama.cpp"
    assert guess_backend(" SmolLM2 ") == "llama.cpp"
    assert guess_backend(str(gguf_file)) == "llama.cpp"
    assert guess_backend("/not/here/model.gguf") == "llama.cpp"  # its error says 'not found'
    assert guess_backend(str(hf_folder)) == "transformers"
    assert guess_backend("Qwen/Qwen2.5-0.5B-Instruct") == "transformers"
    assert guess_backend("smollm2", "http://127.0.0.1:8000/v1") == "openai"


def test_an_explicit_backend_wins_over_auto(hf_folder: Path) -> None:
    assert resolve_backend(Settings(model=str(hf_folder))) == "transformers"
    assert resolve_backend(Settings(model=str(hf_folder), backend="llama.cpp")) == "llama.cpp"
    assert resolve_backend(Settings(base_url="http://h:1/v1", backend="llama.cpp")) == "llama.cpp"
    assert resolve_backend(Settings(base_url="http://h:1/v1")) == "openai"


def test_transformers_model_resolution(hf_folder: Path, gguf_file: Path, tmp_path: Path) -> None:
    assert resolve_hf_model(str(hf_folder)) == (str(hf_folder.resolve()), True)
    assert resolve_hf_model("org/model-7b") == ("org/model-7b", False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_hf_model(str(empty))
    with pytest.raises(ModelError, match="llama.cpp"):
        resolve_hf_model(str(gguf_file))
    with pytest.raises(ModelError, match="GGUF"):
        resolve_hf_model("smollm2")
    with pytest.raises(ModelError, match="not found"):
        resolve_hf_model("no such model")


# --------------------------------------------------------------------------- the door


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"load_in_4bit": True, "load_in_8bit": True}, "choose one of load_in_4bit and load_in_8bit"),
        ({"load_in_4bit": True, "device": "cpu"}, "load_in_4bit needs a CUDA GPU"),
        ({"load_in_8bit": True, "device": "cpu"}, "load_in_8bit needs a CUDA GPU"),
        ({"backend": "openai"}, "the openai backend needs base_url"),
        ({"backend": "openai", "base_url": "127.0.0.1:8000/v1"}, "must start with http"),
        ({"backend": "llama.cpp", "rope_scaling": 2.0}, "rope_freq_base"),
        ({"backend": "openai", "base_url": "http://h/v1", "load_in_8bit": True}, "transformers backend setting"),
        ({"rope_scaling": 0.5}, "rope_scaling"),
        ({"torch_dtype": "float8"}, "torch_dtype"),
        ({"backend": "vllm"}, "backend"),
    ],
)
def test_impossible_combinations_are_refused_at_the_door(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_settings(**overrides)
    assert "\n" not in str(err.value)


def test_transformers_options_with_a_gguf_model_are_refused_before_loading() -> None:
    with pytest.raises(ConfigError, match="load_in_4bit needs the transformers backend"):
        resolve_backend(Settings(load_in_4bit=True))  # smollm2 -> llama.cpp


def test_base_url_loses_its_trailing_slash() -> None:
    assert Settings(base_url=" http://h:8000/v1/ ").base_url == "http://h:8000/v1"


# --------------------------------------------------------------------------- API key


def test_api_key_from_ragqa_env_then_openai_env(monkeypatch) -> None:
    assert Settings().api_key is None
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-env")
    assert Settings().api_key.get_secret_value() == "sk-openai-env"
    monkeypatch.setenv("RAGQA_API_KEY", "sk-ragqa-env")
    assert Settings().api_key.get_secret_value() == "sk-ragqa-env"


def test_api_key_is_never_printed_or_dumped(monkeypatch) -> None:
    from ragqa.pipeline import SUMMARY_SETTINGS, SUMMARY_SETTINGS_IF_SET, _summary_key

    monkeypatch.setenv("RAGQA_API_KEY", "sk-very-secret")
    s = Settings(base_url="http://h/v1")
    for text in (repr(s), str(s), json.dumps(s.model_dump(mode="json")), s.model_dump_json()):
        assert "sk-very-secret" not in text
    assert "api_key" not in SUMMARY_SETTINGS + SUMMARY_SETTINGS_IF_SET
    assert _summary_key("f", s) == _summary_key("f", Settings(base_url="http://h/v1", api_key="sk-other"))


def test_summary_key_ignores_new_settings_left_at_their_defaults() -> None:
    """Summaries made before the backend settings existed are still found (same key)."""
    import hashlib

    from ragqa.pipeline import SUMMARY_SETTINGS, _summary_key

    s = Settings()
    old_blob = json.dumps({"file": "f", **{k: getattr(s, k) for k in SUMMARY_SETTINGS}}, sort_keys=True, default=str)
    assert _summary_key("f", s) == hashlib.sha256(old_blob.encode()).hexdigest()[:32]
    assert _summary_key("f", Settings(base_url="http://h/v1", api_model="a")) != _summary_key(
        "f", Settings(base_url="http://h/v1", api_model="b"))


# --------------------------------------------------------------------------- pipeline and CLI


def test_pipeline_loads_the_resolved_backend(monkeypatch, make_settings, hf_folder: Path, fake_backend_cls) -> None:
    import ragqa.llms
    from ragqa.pipeline import Pipeline

    seen: list[tuple[str, bool]] = []

    def fake_load(settings: Settings, *, backend: str, vocab_only: bool = False) -> Any:
        seen.append((backend, vocab_only))
        return fake_backend_cls()

    monkeypatch.setattr(ragqa.llms, "load_backend", fake_load)
    pipeline = Pipeline(make_settings(model=str(hf_folder)))
    assert pipeline.backend_name == "transformers"
    pipeline.language_model()
    assert seen == [("transformers", False)]


def test_check_models_needs_no_gguf_for_transformers_or_openai(make_settings, hf_folder: Path, monkeypatch,
                                                               fake_backend_cls) -> None:
    import ragqa.llms
    from ragqa.pipeline import Pipeline

    Pipeline(make_settings(model=str(hf_folder))).check_models()  # no .gguf, no error
    monkeypatch.setattr(ragqa.llms, "load_backend", lambda settings, **k: fake_backend_cls())
    remote = Pipeline(make_settings(model="/no/such/model.gguf", base_url="http://127.0.0.1:9/v1"))
    remote.check_models()  # the model path is not used by the openai backend
    assert remote.backend_name == "openai" and False in remote._backends  # the server was asked first

    empty = hf_folder.parent / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="config.json"):
        Pipeline(make_settings(model=str(empty))).check_models()


def test_cli_backend_flags_reach_the_settings(monkeypatch, tmp_path: Path) -> None:
    import ragqa.pipeline
    from ragqa.cli import app
    from ragqa.errors import InputError

    captured: list[Settings] = []

    class RecordingPipeline:
        def __init__(self, settings: Settings) -> None:
            captured.append(settings)

        def ask(self, *args: Any, **kwargs: Any) -> Any:
            raise InputError("stop here")

        def summarize_batch(self, *args: Any, **kwargs: Any) -> Any:
            raise InputError("stop here")

    monkeypatch.setattr(ragqa.pipeline, "Pipeline", RecordingPipeline)
    runner = CliRunner()
    result = runner.invoke(app, ["ask", "doc.txt", "q?", "--backend", "openai", "--base-url", "http://h:8000/v1",
                                 "--api-model", "qwen", "--chat-format", "chatml"])
    assert "stop here" in result.output
    s = captured[-1]
    assert (s.backend, s.base_url, s.api_model, s.chat_format) == ("openai", "http://h:8000/v1", "qwen", "chatml")

    runner.invoke(app, ["ask", "doc.txt", "q?", "--backend", "transformers", "--model", "org/name", "--device", "cuda",
                        "--torch-dtype", "bfloat16", "--load-in-4bit", "--rope-scaling", "2"])
    s = captured[-1]
    assert (s.backend, s.device, s.torch_dtype, s.load_in_4bit, s.load_in_8bit, s.rope_scaling) == (
        "transformers", "cuda", "bfloat16", True, False, 2.0)

    runner.invoke(app, ["summarize", "doc.txt", "--out", str(tmp_path / "o.jsonl"), "--backend", "openai",
                        "--base-url", "http://h:1/v1", "--api-model", "m"])
    s = captured[-1]
    assert (s.backend, s.base_url, s.api_model) == ("openai", "http://h:1/v1", "m")


def test_cli_refuses_openai_without_base_url_in_one_line() -> None:
    from ragqa.cli import app

    result = CliRunner().invoke(app, ["ask", "doc.txt", "q?", "--backend", "openai"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "ragqa: error: invalid settings: the openai backend needs base_url (e.g. http://127.0.0.1:8000/v1)"
    ]
