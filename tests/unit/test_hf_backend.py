"""TransformersBackend with a fake ``transformers`` module: what it asks from_pretrained for on CPU,
GPU and with 4/8-bit weights, the context it allows, its chat format, and its streaming (stop
strings cut the text and stop generation). torch is the real one; no weights exist."""

from __future__ import annotations

import queue
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from ragqa.config import Settings
from ragqa.errors import ConfigError, MissingDependencyError, ModelError
from ragqa.llms import StopCutter, TransformersBackend, load_backend
from ragqa.llms.hf import RecentRepetitionPenalty

torch = pytest.importorskip("torch")

CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class FakeTokenizer:
    bos_token, eos_token = "<|im_start|>", "<|im_end|>"
    bos_token_id, eos_token_id, pad_token_id = 1, 2, None

    def __init__(self, chat_template: str | None = CHATML_TEMPLATE) -> None:
        self.chat_template = chat_template

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [1] + [7] * len(text.split())}  # BOS + one token per word


class FakeConfig:
    def __init__(self) -> None:
        self.max_position_embeddings = 2048
        self.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}


class FakeModel:
    """generate() streams its canned words one 'token' at a time, asking the stopping criteria after each."""

    device = "cpu"

    def __init__(self, words: list[str]) -> None:
        self.words = words
        self.generate_calls: list[dict[str, Any]] = []
        self.tokens_generated = 0
        self.fail: Exception | None = None

    def eval(self) -> "FakeModel":
        return self

    def generate(self, **kwargs: Any) -> None:
        self.generate_calls.append(kwargs)
        if self.fail:
            raise self.fail
        ids = kwargs["input_ids"]
        streamer, criteria = kwargs["streamer"], kwargs["stopping_criteria"]
        for word in self.words[: kwargs["max_new_tokens"]]:
            self.tokens_generated += 1
            streamer.put_text(word)
            # a real model is slow: the reader has seen this piece before the next token is made
            deadline = time.monotonic() + 5
            while streamer.taken < streamer.put and not any(c.cancel.is_set() for c in criteria):
                assert time.monotonic() < deadline, "the reader never took the piece"
                time.sleep(0.001)
            if any(bool(c(ids, None).all()) for c in criteria):
                break
        streamer.end()


class FakeStreamer:
    def __init__(self, tokenizer: Any, skip_prompt: bool = False, skip_special_tokens: bool = False) -> None:
        assert skip_prompt and skip_special_tokens
        self.queue: queue.Queue = queue.Queue()
        self.put = self.taken = 0

    def put_text(self, text: str) -> None:
        self.put += 1
        self.queue.put(text)

    def end(self) -> None:
        self.queue.put(None)

    def __iter__(self):
        while (item := self.queue.get(timeout=10)) is not None:
            yield item
            self.taken += 1  # the reader asked for the next piece


class FakeBitsAndBytesConfig:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class FakeTransformers:
    """What the backend imports from transformers, recording every from_pretrained call."""

    def __init__(self, tokenizer: FakeTokenizer, words: list[str]) -> None:
        self.calls: dict[str, list[tuple[str, dict[str, Any]]]] = {"tokenizer": [], "config": [], "model": []}
        self.config = FakeConfig()
        self.model = FakeModel(words)
        module = types.ModuleType("transformers")
        module.__version__ = "5.0.0"
        module.AutoTokenizer = self._loader("tokenizer", tokenizer)
        module.AutoConfig = self._loader("config", self.config)
        module.AutoModelForCausalLM = self._loader("model", self.model)
        module.BitsAndBytesConfig = FakeBitsAndBytesConfig
        module.TextIteratorStreamer = FakeStreamer
        module.StoppingCriteriaList = list
        module.LogitsProcessorList = list
        module.utils = types.SimpleNamespace(logging=types.SimpleNamespace(disable_progress_bar=lambda: None))
        self.module = module

    def _loader(self, kind: str, result: Any) -> Any:
        def from_pretrained(location: str, **kwargs: Any) -> Any:
            self.calls[kind].append((location, kwargs))
            return result

        return types.SimpleNamespace(from_pretrained=from_pretrained)


@pytest.fixture
def hf_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny-llama"
    folder.mkdir()
    (folder / "config.json").write_text("{}", "utf-8")
    return folder


@pytest.fixture
def fake_hf(monkeypatch):
    """make(gpu=False, bitsandbytes=True, chat_template=..., words=[...]) -> FakeTransformers installed."""

    def make(*, gpu: bool = False, bitsandbytes: bool = True, chat_template: str | None = CHATML_TEMPLATE,
             words: list[str] | None = None) -> FakeTransformers:
        fake = FakeTransformers(FakeTokenizer(chat_template), words or ["The ", "answer ", "is ", "42."])
        monkeypatch.setitem(sys.modules, "transformers", fake.module)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
        import ragqa.llms.hf

        real_find_spec = ragqa.llms.hf.importlib.util.find_spec
        monkeypatch.setattr(ragqa.llms.hf.importlib.util, "find_spec",
                            lambda name, *a: (object() if bitsandbytes else None) if name == "bitsandbytes"
                            else real_find_spec(name, *a))
        return fake

    return make


def load(folder: Path | str, **overrides: Any) -> TransformersBackend:
    return load_backend(Settings(model=str(folder), **overrides))  # type: ignore[return-value]


# --------------------------------------------------------------------------- loading


def test_cpu_loads_float32_from_the_local_folder_only(fake_hf, hf_folder: Path) -> None:
    fake = fake_hf()
    backend = load(hf_folder)
    assert backend.name == "transformers" and backend.device == "cpu"
    [(location, kwargs)] = fake.calls["model"]
    assert location == str(hf_folder.resolve())
    assert kwargs == {"config": fake.config, "local_files_only": True, "dtype": torch.float32}
    assert fake.calls["tokenizer"] == [(str(hf_folder.resolve()), {"local_files_only": True})]


def test_cpu_bfloat16_when_asked(fake_hf, hf_folder: Path) -> None:
    fake = fake_hf()
    load(hf_folder, torch_dtype="bfloat16")
    assert fake.calls["model"][0][1]["dtype"] is torch.bfloat16
    assert "device_map" not in fake.calls["model"][0][1]


def test_gpu_loads_float16_spread_by_device_map_auto(fake_hf, hf_folder: Path) -> None:
    fake = fake_hf(gpu=True)
    backend = load(hf_folder)
    assert backend.device == "cuda"
    kwargs = fake.calls["model"][0][1]
    assert kwargs["dtype"] is torch.float16 and kwargs["device_map"] == "auto"
    assert "quantization_config" not in kwargs


def test_4bit_passes_a_bitsandbytes_nf4_config(fake_hf, hf_folder: Path) -> None:
    fake = fake_hf(gpu=True)
    load(hf_folder, load_in_4bit=True)
    kwargs = fake.calls["model"][0][1]
    assert kwargs["device_map"] == "auto"
    bnb = kwargs["quantization_config"]
    assert isinstance(bnb, FakeBitsAndBytesConfig)
    assert bnb.kwargs == {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": torch.float16}


def test_8bit_passes_a_bitsandbytes_8bit_config(fake_hf, hf_folder: Path) -> None:
    fake = fake_hf(gpu=True)
    load(hf_folder, load_in_8bit=True, device="cuda")
    assert fake.calls["model"][0][1]["quantization_config"].kwargs == {"load_in_8bit": True}


def test_quantization_without_a_gpu_is_a_clear_error(fake_hf, hf_folder: Path) -> None:
    fake = fake_hf(gpu=False)
    with pytest.raises(ConfigError, match="load_in_4bit needs a CUDA GPU"):
        load(hf_folder, load_in_4bit=True)  # device auto: the check needs torch, so it is at load
    assert fake.calls["model"] == []


def test_cuda_asked_but_absent_is_a_model_error(fake_hf, hf_folder: Path) -> None:
    fake_hf(gpu=False)
    with pytest.raises(ModelError, match="no CUDA GPU"):
        load(hf_folder, device="cuda")


def test_missing_bitsandbytes_names_the_install_extra(fake_hf, hf_folder: Path) -> None:
    fake_hf(gpu=True, bitsandbytes=False)
    with pytest.raises(MissingDependencyError, match=r"ragqa\[gpu\]"):
        load(hf_folder, load_in_8bit=True)


def test_hub_id_is_not_limited_to_local_files(fake_hf) -> None:
    fake = fake_hf()
    load("org/tiny-llama")
    location, kwargs = fake.calls["model"][0]
    assert location == "org/tiny-llama" and "local_files_only" not in kwargs


def test_vocab_only_loads_no_weights(fake_hf, hf_folder: Path) -> None:
    fake = fake_hf()
    backend = load_backend(Settings(model=str(hf_folder)), vocab_only=True)
    assert fake.calls["model"] == [] and len(fake.calls["tokenizer"]) == 1
    assert backend.count_tokens("three little words") == 4
    with pytest.raises(ModelError, match="without weights"):
        list(backend.stream("p"))


def test_transformers_loader_errors_are_model_errors(fake_hf, hf_folder: Path) -> None:
    fake = fake_hf()

    def broken(location: str, **kwargs: Any) -> Any:
        raise OSError("Can't load tokenizer for 'x'.\nIf you were trying...")

    fake.module.AutoTokenizer = types.SimpleNamespace(from_pretrained=broken)
    with pytest.raises(ModelError) as err:
        load(hf_folder)
    assert "tiny-llama" in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- context and RoPE


def test_context_is_capped_by_max_position_embeddings_with_a_note(fake_hf, hf_folder: Path) -> None:
    fake_hf()
    backend = load(hf_folder, n_ctx=4096)
    assert backend.context_size() == 2048
    assert any("2048" in n and "rope_scaling" in n for n in backend.notes)
    assert load(hf_folder, n_ctx=1024).context_size() == 1024


def test_rope_scaling_sets_dynamic_ntk_and_stretches_the_context(fake_hf, hf_folder: Path) -> None:
    fake = fake_hf()
    backend = load(hf_folder, n_ctx=4096, rope_scaling=2.0)
    assert fake.config.rope_parameters == {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    assert fake.calls["model"][0][1]["config"] is fake.config
    assert backend.context_size() == 4096 and backend.notes == []


def test_rope_scaling_before_transformers_5_uses_rope_scaling() -> None:
    from ragqa.llms.hf import _set_dynamic_rope

    config = types.SimpleNamespace(rope_scaling=None)
    _set_dynamic_rope(config, 4.0)
    assert config.rope_scaling == {"type": "dynamic", "factor": 4.0}


# --------------------------------------------------------------------------- chat format


def test_auto_chat_format_is_the_tokenizer_template(fake_hf, hf_folder: Path) -> None:
    fake_hf()
    fmt = load(hf_folder).chat_format("auto")
    assert fmt.prompt("Hi?", "Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert fmt.stop == ("<|im_end|>",)
    assert fmt.name == "auto (tiny-llama)"


def test_no_template_falls_back_to_alpaca2_with_a_note(fake_hf, hf_folder: Path) -> None:
    fake_hf(chat_template=None)
    backend = load(hf_folder)
    assert backend.chat_format("auto").name == "alpaca-2"
    assert any("no chat template" in n and "alpaca-2" in n for n in backend.notes)
    assert backend.chat_format("chatml").name == "chatml"


# --------------------------------------------------------------------------- generation


def test_generation_params_map_to_generate(fake_hf, hf_folder: Path) -> None:
    fake_hf()
    backend = load(hf_folder)
    greedy = backend.generate_kwargs({"max_tokens": 50, "temperature": 0.0, "top_k": 40, "top_p": 0.9,
                                      "repeat_penalty": 1.0})
    assert greedy == {"max_new_tokens": 50, "do_sample": False}
    sampled = backend.generate_kwargs({"max_tokens": 9, "temperature": 0.7, "top_k": 5, "top_p": 0.8,
                                       "repeat_penalty": 1.3})
    [penalty] = sampled.pop("logits_processor")
    assert sampled == {"max_new_tokens": 9, "do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 5}
    assert isinstance(penalty, RecentRepetitionPenalty) and penalty.penalty == 1.3 and penalty.last_n == 64


def test_repeat_penalty_only_touches_recent_tokens() -> None:
    """Like llama.cpp's: the prompt's early words (the passages) stay free to be quoted."""
    scores = torch.tensor([[2.0, -2.0, 2.0, 2.0]])
    ids = torch.tensor([[0, 1, 1, 3]])  # token 0 is outside the window of the last 3
    out = RecentRepetitionPenalty(2.0, last_n=3)(ids, scores)
    assert out.tolist() == [[2.0, -4.0, 2.0, 1.0]]


def test_stream_yields_pieces_and_fills_stats(fake_hf, hf_folder: Path) -> None:
    fake = fake_hf(words=["The ", "answer ", "is ", "42."])
    backend = load(hf_folder)
    pieces = list(backend.stream("question here", stop=[], max_tokens=10, temperature=0.0))
    assert pieces == ["The ", "answer ", "is ", "42."]
    assert backend.stats.prompt_tokens == 3 and backend.stats.completion_tokens == 4
    [call] = fake.model.generate_calls
    assert call["input_ids"].tolist() == [[1, 7, 7]] and call["do_sample"] is False
    assert call["pad_token_id"] == 2  # no pad token: eos pads


def test_a_stop_string_cuts_the_text_and_stops_generation(fake_hf, hf_folder: Path) -> None:
    words = ["Paris ", "is ", "the ", "capital.", "<|im", "_end|>", "junk ", "more ", "junk ", "again"]
    fake = fake_hf(words=words)
    backend = load(hf_folder)
    text = "".join(backend.stream("p", stop=["<|im_end|>"], max_tokens=10, temperature=0.0))
    assert text == "Paris is the capital."
    assert fake.model.tokens_generated < len(words)  # generate() was told to stop


def test_an_abandoned_stream_stops_generation_and_frees_the_model(fake_hf, hf_folder: Path) -> None:
    fake = fake_hf(words=[f"w{i} " for i in range(50)])
    backend = load(hf_folder)
    stream = backend.stream("p", max_tokens=50, temperature=0.0)
    assert next(stream) == "w0 "
    stream.close()
    assert fake.model.tokens_generated < 50
    assert not backend._lock.locked()


def test_generation_failure_is_a_model_error_not_a_hang(fake_hf, hf_folder: Path) -> None:
    fake = fake_hf()
    backend = load(hf_folder)
    fake.model.fail = RuntimeError("CUDA out of memory.\nTried to allocate")
    with pytest.raises(ModelError, match="CUDA out of memory. Tried"):
        list(backend.stream("p", max_tokens=5))


def test_prompt_over_the_context_is_refused(fake_hf, hf_folder: Path) -> None:
    fake_hf()
    backend = load(hf_folder, n_ctx=512, max_new_tokens=10)
    with pytest.raises(ModelError, match="does not fit n_ctx 512"):
        list(backend.stream("word " * 600, max_tokens=10))


# --------------------------------------------------------------------------- stop strings


def test_stop_cutter_holds_back_only_a_possible_stop_prefix() -> None:
    cut = StopCutter(["</s>", "\n\nQuestion:"])
    assert cut.feed("Hello wor") == "Hello wor"
    assert cut.feed("ld\n") == "ld"  # "\n" may start "\n\nQuestion:"
    assert cut.feed("Next") == "\nNext"
    assert cut.feed(" <") == " "
    assert cut.feed("/s> gone") == "" and cut.stopped
    assert cut.feed("more") == "" and cut.flush() == ""


def test_stop_cutter_earliest_stop_wins_and_flush_returns_the_tail() -> None:
    cut = StopCutter(["B", "A"])
    assert cut.feed("xxAyyB") == "xx"
    tail = StopCutter(["</s>"])
    assert tail.feed("end</") == "end" and tail.flush() == "</"
    assert StopCutter(None).feed("anything") == "anything"
