"""LLM backends, registered by name: llama.cpp (GGUF), transformers (HF folders and hub ids, CPU or
GPU, 4/8-bit) and openai (any OpenAI-compatible server: vLLM, llama.cpp's servers, ...).

A backend loads a model once and offers: token counting with the model's own tokenizer, its
context size, the chat format (``auto`` resolved from the model's own template), and streamed
generation of an already chat-formatted prompt. ``RagqaLLM`` wraps one as a LangChain LLM so
chains accept it like any other. ``load_backend`` picks the backend from the settings.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import GenerationChunk

from ragqa.chat_formats import AUTO, ChatFormat, get_chat_format, template_chat_format, tokenizer_chat_format
from ragqa.config import TRANSFORMERS_ONLY, Settings
from ragqa.errors import ConfigError, MissingDependencyError, ModelError
from ragqa.models import guess_backend, resolve_hf_model, resolve_llm_path

log = logging.getLogger(__name__)

REPEAT_LAST_N = 64  # llama.cpp's default window for repeat_penalty


@dataclass
class GenerationStats:
    """What the last generation cost; decode speed excludes prompt processing."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_seconds: float = 0.0  # request -> first token
    decode_seconds: float = 0.0  # first token -> last token

    @property
    def decode_tokens_per_s(self) -> float:
        if self.completion_tokens < 2 or self.decode_seconds <= 0:
            return 0.0
        return (self.completion_tokens - 1) / self.decode_seconds

    def as_dict(self) -> dict[str, float]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "prompt_s": round(self.prompt_seconds, 4),
            "decode_s": round(self.decode_seconds, 4),
            "decode_tokens_per_s": round(self.decode_tokens_per_s, 2),
        }


class Backend(Protocol):
    name: str
    notes: list[str]

    def count_tokens(self, text: str) -> int: ...
    def context_size(self) -> int: ...
    def chat_format(self, name: str) -> ChatFormat: ...
    def stream(self, prompt: str, stop: list[str] | None = None, **params: Any) -> Iterator[str]: ...


@dataclass
class GenerationParams:
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    repeat_penalty: float

    @classmethod
    def from_settings(cls, s: Settings) -> "GenerationParams":
        return cls(s.max_new_tokens, s.temperature, s.top_k, s.top_p, s.repeat_penalty)


class LlamaCppBackend:
    """A GGUF model through llama-cpp-python. ``vocab_only`` loads just the tokenizer."""

    name = "llama.cpp"

    def __init__(self, model_path: Path, settings: Settings, *, vocab_only: bool = False) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise MissingDependencyError("llama-cpp-python") from None
        self.path = Path(model_path)
        self.settings = settings
        self.vocab_only = vocab_only
        self.notes: list[str] = []
        self.stats = GenerationStats()
        self._lock = threading.Lock()  # llama.cpp contexts are not thread-safe
        kwargs: dict[str, Any] = dict(
            model_path=str(self.path),
            n_ctx=settings.n_ctx,
            n_threads=settings.n_threads or _physical_cores(),
            n_gpu_layers=settings.n_gpu_layers,
            n_batch=min(settings.n_batch, settings.n_ctx),
            rope_freq_base=settings.rope_freq_base,
            rope_freq_scale=settings.rope_freq_scale,
            seed=settings.seed,
            vocab_only=vocab_only,
            verbose=False,
        )
        try:
            from llama_cpp._utils import suppress_stdout_stderr

            with suppress_stdout_stderr(disable=False):
                self.llm = Llama(**kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(f"llama.cpp cannot load {self.path}: {exc}") from None
        self.metadata: dict[str, str] = dict(getattr(self.llm, "metadata", {}) or {})
        self._warn_context()

    def _warn_context(self) -> None:
        arch = self.metadata.get("general.architecture", "")
        trained = int(self.metadata.get(f"{arch}.context_length", 0) or 0)
        s = self.settings
        if trained and s.n_ctx > trained and not (s.rope_freq_base or s.rope_freq_scale):
            self.notes.append(
                f"n_ctx {s.n_ctx} is over the model's trained context ({trained}) with no RoPE "
                "scaling: quality may drop (set rope_freq_base, NTK-style, or a smaller n_ctx)"
            )

    def context_size(self) -> int:
        return self.settings.n_ctx

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def token_text(self, token_id: int) -> str:
        """The text of one token ("" for an id outside the vocabulary, e.g. -1 for 'none')."""
        if not 0 <= token_id < self.llm.n_vocab():
            return ""
        return self.llm.detokenize([token_id], special=True).decode("utf-8", errors="ignore")

    def chat_format(self, name: str) -> ChatFormat:
        """Resolve a format name or file; ``auto`` uses the GGUF's chat template, else alpaca-2.

        Token ids in a format file (``<FLM_FIX_TOKEN_n>``) become this model's text for them.
        """
        if name.strip().lower() != AUTO:
            return get_chat_format(name, token_text=self.token_text)
        template = self.metadata.get("tokenizer.chat_template")
        bos, eos = self.token_text(self.llm.token_bos()), self.token_text(self.llm.token_eos())
        fmt, notes = template_chat_format(self.path.name, template, bos, eos)
        self.notes.extend(notes)
        return fmt

    def stream(self, prompt: str, stop: list[str] | None = None, **params: Any) -> Iterator[str]:
        if self.vocab_only:
            raise ModelError("this model was loaded without weights (dry run); it cannot generate")
        prompt_tokens = self.count_tokens(prompt)
        check_fits(prompt_tokens, params.get("max_tokens", 0), self.context_size())
        with self._lock:
            self.llm.reset()
            stats = GenerationStats(prompt_tokens=prompt_tokens)
            t0 = time.perf_counter()
            first = last = None
            for part in self.llm.create_completion(prompt, stop=stop or [], stream=True, **params):
                choice = part["choices"][0]
                if choice.get("finish_reason") is None:  # one chunk per token; the last says why it ended
                    now = time.perf_counter()
                    if first is None:
                        first = now
                    last = now
                    stats.completion_tokens += 1
                if choice["text"]:
                    yield choice["text"]
            if first is not None:
                stats.prompt_seconds = first - t0
                stats.decode_seconds = (last or first) - first
            self.stats = stats


def _physical_cores() -> int:
    """llama.cpp is fastest with one thread per physical core; os.cpu_count() counts SMT twins."""
    try:
        cores = set()
        with open("/proc/cpuinfo") as fh:
            phys = core = None
            for line in fh:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                    cores.add((phys, core))
        if cores:
            return len(cores)
    except OSError:
        pass
    return max(1, os.cpu_count() or 1)


class StopCutter:
    """Cuts streamed text at the first stop string, holding back only what could start one.

    >>> cut = StopCutter(["</s>"])
    >>> cut.feed("Hello</"), cut.feed("s> never shown"), cut.stopped
    ('Hello', '', True)
    """

    def __init__(self, stop: list[str] | None) -> None:
        self.stop = [s for s in stop or [] if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        buf = self.pending + text
        hits = [i for i in (buf.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped, self.pending = True, ""
            return buf[: min(hits)]
        hold = max((n for s in self.stop for n in range(1, len(s)) if buf.endswith(s[:n])), default=0)
        self.pending = buf[len(buf) - hold:] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        """What was held back, once the stream ended without a stop string."""
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out

    def cut(self, pieces: Iterable[str]) -> Iterator[str]:
        """``pieces`` up to the first stop string; stops reading them once one is seen."""
        for piece in pieces:
            text = self.feed(piece)
            if text:
                yield text
            if self.stopped:
                return
        if tail := self.flush():
            yield tail


def check_fits(prompt_tokens: int, max_tokens: int, n_ctx: int) -> None:
    """Refuse a generation whose prompt plus answer cannot fit the context window."""
    if prompt_tokens + max_tokens > n_ctx:
        raise ModelError(f"the prompt ({prompt_tokens} tokens) plus max_new_tokens does not fit n_ctx {n_ctx}")


# --------------------------------------------------------------------------- transformers


class TransformersBackend:
    """A Hugging Face causal LM: a local folder (save_pretrained) or a hub id.

    CPU: float32 (or bfloat16). GPU: float16 with ``device_map="auto"``, optionally 4-bit NF4 or
    8-bit through bitsandbytes. ``vocab_only`` loads the tokenizer and config, not the weights.
    """

    name = "transformers"

    def __init__(self, settings: Settings, *, vocab_only: bool = False) -> None:
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise MissingDependencyError(exc.name or "transformers") from None
        self.settings = settings
        self.vocab_only = vocab_only
        self.notes: list[str] = []
        self.stats = GenerationStats()
        self._lock = threading.Lock()  # one generate() at a time per model
        self.location, local = resolve_hf_model(settings.model)
        self.label = Path(self.location).name if local else self.location
        hub: dict[str, Any] = {"local_files_only": True} if local else {}  # a hub id may download
        self.device = _pick_device(settings.device, torch)
        if not sys.stderr.isatty():
            transformers.utils.logging.disable_progress_bar()  # no \r-bars in logs and captured output
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.location, **hub)
            self.config = transformers.AutoConfig.from_pretrained(self.location, **hub)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"transformers cannot load {self.label}: {_one_line(exc)}") from None
        if settings.rope_scaling:
            _set_dynamic_rope(self.config, settings.rope_scaling)
        self._n_ctx = self._context_limit()
        if settings.rope_freq_base or settings.rope_freq_scale:
            self.notes.append("rope_freq_base / rope_freq_scale are llama.cpp settings; the transformers "
                              "backend ignores them (use rope_scaling)")
        self.model: Any = None
        if vocab_only:
            return
        if settings.n_threads and self.device == "cpu":
            torch.set_num_threads(settings.n_threads)
        kwargs = self.load_kwargs(torch, transformers)
        try:
            self.model = transformers.AutoModelForCausalLM.from_pretrained(
                self.location, config=self.config, **hub, **kwargs
            )
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelError(f"transformers cannot load {self.label}: {_one_line(exc)}") from None
        self.model.eval()

    def load_kwargs(self, torch: Any, transformers: Any) -> dict[str, Any]:
        """from_pretrained's dtype / device_map / quantization_config for these settings."""
        s = self.settings
        dtype_name = s.torch_dtype if s.torch_dtype != "auto" else ("float16" if self.device == "cuda" else "float32")
        dtype = getattr(torch, dtype_name)
        # transformers 5 renamed torch_dtype to dtype (4.56+ accept both)
        kwargs: dict[str, Any] = {"dtype" if _version_at_least(transformers, 4, 56) else "torch_dtype": dtype}
        if self.device == "cuda":
            kwargs["device_map"] = "auto"  # accelerate spreads the layers over the GPUs (and CPU if needed)
        elif dtype_name == "float16":
            self.notes.append("float16 on the CPU is slow and some operations lack kernels; use float32 or bfloat16")
        bits = 4 if s.load_in_4bit else 8 if s.load_in_8bit else 0
        if bits:
            if self.device != "cuda":
                raise ConfigError(f"load_in_{bits}bit needs a CUDA GPU (bitsandbytes); torch sees none")
            if importlib.util.find_spec("bitsandbytes") is None:
                raise MissingDependencyError("bitsandbytes", "gpu")
            if bits == 4:
                kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
                )
            else:
                kwargs["quantization_config"] = transformers.BitsAndBytesConfig(load_in_8bit=True)
        return kwargs

    def _context_limit(self) -> int:
        """n_ctx, capped by the model's max_position_embeddings (times the RoPE factor)."""
        n_ctx = self.settings.n_ctx
        trained = getattr(self.config, "max_position_embeddings", None)
        if not trained:
            return n_ctx
        factor = self.settings.rope_scaling or 1.0
        limit = int(trained * factor)
        if n_ctx > limit:
            hint = "" if self.settings.rope_scaling else " (rope_scaling stretches it)"
            self.notes.append(f"n_ctx {n_ctx} is over {self.label}'s limit of {limit} positions; using {limit}{hint}")
            return limit
        return n_ctx

    def context_size(self) -> int:
        return self._n_ctx

    def _encode(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        bos = self.tokenizer.bos_token_id
        if bos is not None and len(ids) > 1 and ids[0] == ids[1] == bos:
            ids = ids[1:]  # the chat template already wrote BOS and the tokenizer added another
        return ids

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def chat_format(self, name: str) -> ChatFormat:
        """Resolve a format name or file; ``auto`` uses the tokenizer's chat template, else alpaca-2."""
        if name.strip().lower() != AUTO:
            return get_chat_format(name, token_text=self.token_text)
        fmt, notes = tokenizer_chat_format(self.tokenizer, self.label)
        self.notes.extend(notes)
        return fmt

    def token_text(self, token_id: int) -> str:
        """A token id's text (for ``<FLM_FIX_TOKEN_n>`` placeholders in format files); "" if unknown."""
        if token_id < 0 or token_id >= len(self.tokenizer):
            return ""
        return self.tokenizer.convert_ids_to_tokens(token_id) or ""

    def generate_kwargs(self, params: dict[str, Any]) -> dict[str, Any]:
        """ragqa's generation params in generate()'s names; temperature 0 means greedy.

        ``repeat_penalty`` is not generate()'s ``repetition_penalty``: that one penalises every
        token of the prompt, so the model shuns the words of the passages it should quote. It
        becomes a ``RecentRepetitionPenalty`` over the last 64 tokens, as llama.cpp applies it.
        """
        kwargs: dict[str, Any] = {"max_new_tokens": int(params.get("max_tokens", self.settings.max_new_tokens))}
        temperature = float(params.get("temperature", 0.0))
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=float(params.get("top_p", 1.0)),
                          top_k=int(params.get("top_k", 0)))
        else:
            kwargs["do_sample"] = False
        penalty = float(params.get("repeat_penalty") or 1.0)
        if penalty != 1.0:
            kwargs["logits_processor"] = [RecentRepetitionPenalty(penalty)]
        return kwargs

    def stream(self, prompt: str, stop: list[str] | None = None, **params: Any) -> Iterator[str]:
        if self.model is None:
            raise ModelError("this model was loaded without weights (dry run); it cannot generate")
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList, TextIteratorStreamer

        ids = self._encode(prompt)
        max_tokens = int(params.get("max_tokens", 0))
        check_fits(len(ids), max_tokens, self.context_size())
        with self._lock:
            streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
            clock = _TokenClock()
            input_ids = torch.tensor([ids], device=self.model.device)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
            kwargs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                          stopping_criteria=StoppingCriteriaList([clock]), pad_token_id=pad,
                          **self.generate_kwargs(params))
            if "logits_processor" in kwargs:
                kwargs["logits_processor"] = LogitsProcessorList(kwargs["logits_processor"])
            failures: list[BaseException] = []

            def run() -> None:
                try:
                    with torch.inference_mode():
                        self.model.generate(**kwargs)
                except BaseException as exc:  # reported to the caller below, not lost in the thread
                    failures.append(exc)
                    streamer.end()

            torch.manual_seed(self.settings.seed)
            t0 = time.perf_counter()
            worker = threading.Thread(target=run, name="ragqa-generate", daemon=True)
            worker.start()
            try:
                yield from StopCutter(stop).cut(streamer)
            finally:
                clock.cancel.set()  # a stop string or an abandoned stream ends generate() at the next token
                worker.join()
                self.stats = clock.stats(len(ids), t0)
            if failures:
                raise ModelError(f"transformers generation failed: {_one_line(failures[0])}")


class RecentRepetitionPenalty:
    """A logits processor: llama.cpp's repeat penalty over the last ``last_n`` tokens (prompt included).

    A token seen recently has its logit divided by ``penalty`` (multiplied, when negative).
    """

    def __init__(self, penalty: float, last_n: int = REPEAT_LAST_N) -> None:
        self.penalty = penalty
        self.last_n = last_n

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        recent = input_ids[:, -self.last_n:]
        picked = torch.gather(scores, 1, recent)
        picked = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return scores.scatter(1, recent, picked)


class _TokenClock:
    """A StoppingCriteria that times each generated token and stops generate() when told to."""

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.times: list[float] = []

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        self.times.append(time.perf_counter())
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)

    def stats(self, prompt_tokens: int, t0: float) -> GenerationStats:
        if not self.times:
            return GenerationStats(prompt_tokens=prompt_tokens)
        return GenerationStats(prompt_tokens, len(self.times), self.times[0] - t0, self.times[-1] - self.times[0])


def _pick_device(wanted: str, torch: Any) -> str:
    has_cuda = bool(torch.cuda.is_available())
    if wanted == "cuda" and not has_cuda:
        raise ModelError("device cuda: torch sees no CUDA GPU (a CPU-only torch build?); set device to cpu or auto")
    if wanted == "auto":
        return "cuda" if has_cuda else "cpu"
    return wanted


def _set_dynamic_rope(config: Any, factor: float) -> None:
    """Dynamic NTK RoPE scaling: ``rope_parameters`` in transformers 5, ``rope_scaling`` before."""
    if hasattr(config, "rope_parameters"):
        params = dict(getattr(config, "rope_parameters", None) or {})
        if any(isinstance(v, dict) for v in params.values()):
            raise ConfigError("rope_scaling: this model sets RoPE per layer type; edit its config.json instead")
        params.update(rope_type="dynamic", factor=float(factor))
        if "rope_theta" not in params and getattr(config, "rope_theta", None):
            params["rope_theta"] = config.rope_theta
        config.rope_parameters = params
    else:
        config.rope_scaling = {"type": "dynamic", "factor": float(factor)}


def _version_at_least(module: Any, major: int, minor: int) -> bool:
    found = re.match(r"(\d+)\.(\d+)", getattr(module, "__version__", "0.0"))
    return bool(found) and (int(found[1]), int(found[2])) >= (major, minor)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or exc.__class__.__name__


# --------------------------------------------------------------------------- openai-compatible


class OpenAIBackend:
    """Any OpenAI-compatible server, through the ``openai`` client's completions endpoint.

    ragqa renders the chat format itself, so the prompt goes to ``/v1/completions`` as one string
    (chat completions would re-wrap it in the server's template). Tokens are counted by the
    server's tokenizer where it offers one (llama-cpp-python: /extras/tokenize/count; vLLM and
    llama.cpp's llama-server: /tokenize), else estimated.
    """

    name = "openai"
    MAX_API_STOPS = 4  # the OpenAI API takes at most 4 stop strings; the rest are cut here

    def __init__(self, settings: Settings) -> None:
        try:
            import openai
        except ImportError:
            raise MissingDependencyError("openai") from None
        if not settings.base_url:
            raise ConfigError("the openai backend needs base_url (e.g. http://127.0.0.1:8000/v1)")
        self.settings = settings
        self.url = settings.base_url
        self.root = self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url
        self.notes: list[str] = []
        self.stats = GenerationStats()
        # servers started without an API key accept any; the client insists on one
        self._key = settings.api_key.get_secret_value() if settings.api_key else ""
        self.client = openai.OpenAI(base_url=self.url, api_key=self._key or "no-key", max_retries=0,
                                    timeout=openai.Timeout(600.0, connect=10.0))
        self._n_ctx = settings.n_ctx
        self.model = self._pick_model(settings.api_model)
        self._token_counts: dict[str, int] = {}
        self._count_remote = self._find_tokenizer()

    # -- what the server offers
    def _pick_model(self, wanted: str | None) -> str:
        try:
            listed = list(self.client.models.list())
        except Exception as exc:
            if wanted and _status(exc) == 404:  # a server without /models
                return wanted
            raise self._error(exc, wanted) from None
        ids = [m.id for m in listed]
        if not wanted:
            if len(ids) != 1:
                offered = ", ".join(ids) or "none"
                raise ConfigError(f"the server at {self.url} offers {len(ids)} models ({offered}); set api_model")
            wanted = ids[0]
        elif ids and wanted not in ids:
            self.notes.append(f"the server at {self.url} lists {', '.join(ids)}, not {wanted!r}; asking for it anyway")
        for m in listed:  # vLLM reports the context it serves
            limit = (m.model_extra or {}).get("max_model_len") if m.id == wanted else None
            if isinstance(limit, int) and limit < self._n_ctx:
                self.notes.append(f"n_ctx {self._n_ctx} is over the {limit} tokens the server allows {wanted}; using {limit}")
                self._n_ctx = limit
        return wanted

    def _find_tokenizer(self) -> Callable[[str], int] | None:
        """The server's own token counter, if it has one; None means estimate."""
        def llama_cpp_python(text: str) -> int:
            return int(self._post("/extras/tokenize/count", {"input": text, "model": self.model})["count"])

        def vllm_or_llama_server(text: str) -> int:
            reply = self._post("/tokenize", {"model": self.model, "prompt": text, "content": text})
            return int(reply["count"]) if "count" in reply else len(reply["tokens"])

        for counter in (llama_cpp_python, vllm_or_llama_server):
            try:
                if counter("ragqa") > 0:
                    return counter
            except (OSError, ValueError, KeyError, TypeError):
                continue
        self.notes.append(f"the server at {self.url} offers no tokenizer endpoint; token counts are estimated "
                          "(prompts are fitted with a margin)")
        return None

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import urllib.request

        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(self.root + path, data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.loads(reply.read())

    # -- the Backend protocol
    def context_size(self) -> int:
        return self._n_ctx

    def count_tokens(self, text: str) -> int:
        if text not in self._token_counts:
            if len(self._token_counts) > 4096:
                self._token_counts.clear()
            if self._count_remote is not None:
                try:
                    self._token_counts[text] = self._count_remote(text)
                except (OSError, ValueError, KeyError) as exc:
                    raise ModelError(f"the server at {self.url} could not count tokens: {_one_line(exc)}") from None
            else:
                self._token_counts[text] = estimate_tokens(text)
        return self._token_counts[text]

    def chat_format(self, name: str) -> ChatFormat:
        """``auto`` cannot read the model's template over the API: alpaca-2, the project default."""
        if name.strip().lower() != AUTO:
            return get_chat_format(name)
        self.notes.append("the openai backend cannot read the model's chat template; using alpaca-2 "
                          "(set --chat-format to the served model's format, e.g. chatml)")
        return get_chat_format("alpaca-2")

    def stream(self, prompt: str, stop: list[str] | None = None, **params: Any) -> Iterator[str]:
        prompt_tokens = self.count_tokens(prompt)
        max_tokens = int(params.get("max_tokens", self.settings.max_new_tokens))
        check_fits(prompt_tokens, max_tokens, self.context_size())
        stops = [s for s in stop or [] if s]
        extra: dict[str, Any] = {}
        if "top_k" in params:
            extra["top_k"] = params["top_k"]
        if "repeat_penalty" in params:
            # llama.cpp's name and window. Not vLLM's repetition_penalty, which counts the whole prompt
            # (the model would shun the passages' words). Servers that do not know a field ignore it.
            extra["repeat_penalty"] = params["repeat_penalty"]
        stats = GenerationStats(prompt_tokens=prompt_tokens)
        t0 = time.perf_counter()
        first = last = None
        response = None
        try:
            response = self.client.completions.create(
                model=self.model, prompt=prompt, stream=True, max_tokens=max_tokens,
                temperature=float(params.get("temperature", 0.0)), top_p=float(params.get("top_p", 1.0)),
                stop=stops[: self.MAX_API_STOPS] or None, seed=self.settings.seed, extra_body=extra,
            )

            def pieces() -> Iterator[str]:
                nonlocal first, last
                for chunk in response:
                    text = chunk.choices[0].text if chunk.choices else ""
                    if text:
                        last = time.perf_counter()
                        first = first or last
                        stats.completion_tokens += 1  # servers stream one token per chunk
                        yield text

            yield from StopCutter(stops).cut(pieces())
        except Exception as exc:
            if isinstance(exc, ModelError) or not _is_openai_error(exc):
                raise
            raise self._error(exc, self.model) from None
        finally:
            if response is not None:
                response.close()
            if first is not None:
                stats.prompt_seconds, stats.decode_seconds = first - t0, (last or first) - first
            self.stats = stats

    def _error(self, exc: BaseException, model: str | None) -> ModelError:
        """One line naming the URL: unreachable, refused key, unknown model, or what it said."""
        import openai

        if isinstance(exc, openai.APIConnectionError):
            cause = _one_line(exc.__cause__) if exc.__cause__ else _one_line(exc).rstrip(".")
            message = f"cannot reach the OpenAI-compatible server at {self.url} ({cause}); is it running?"
        elif isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            message = (f"the server at {self.url} refused the API key ({exc.status_code}); "
                       "set RAGQA_API_KEY or OPENAI_API_KEY")
        elif isinstance(exc, openai.NotFoundError):
            message = (f"the server at {self.url} answered 404 for model {model!r}: set api_model to one it "
                       "serves (GET /models), and check base_url ends with its API root (often /v1)")
        elif isinstance(exc, openai.APIStatusError):
            message = f"the server at {self.url} answered {exc.status_code}: {_one_line(exc)}"
        else:
            message = f"the server at {self.url} failed: {_one_line(exc)}"
        if self._key:
            message = message.replace(self._key, "***")
        return ModelError(message)


def _is_openai_error(exc: BaseException) -> bool:
    import openai

    return isinstance(exc, openai.OpenAIError)


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)


_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


def estimate_tokens(text: str) -> int:
    """A deliberately high token estimate: one per CJK character, one per 3 bytes of the rest.

    >>> estimate_tokens("熊猫 eats bamboo")  # 2 + 12 bytes / 3
    6
    """
    cjk = len(_CJK.findall(text))
    rest = _CJK.sub("", text)
    return cjk + math.ceil(len(rest.encode("utf-8")) / 3)


BackendFactory = Callable[[Settings, bool], Backend]
_BACKENDS: dict[str, BackendFactory] = {}


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    def decorator(factory: BackendFactory) -> BackendFactory:
        _BACKENDS[name] = factory
        return factory

    return decorator


@register_backend("llama.cpp")
def _load_llama_cpp(settings: Settings, vocab_only: bool) -> Backend:
    return LlamaCppBackend(resolve_llm_path(settings.model), settings, vocab_only=vocab_only)


@register_backend("transformers")
def _load_transformers(settings: Settings, vocab_only: bool) -> Backend:
    return TransformersBackend(settings, vocab_only=vocab_only)


@register_backend("openai")
def _load_openai(settings: Settings, vocab_only: bool) -> Backend:
    return OpenAIBackend(settings)  # no weights here either way: a dry run costs the same


def resolve_backend(settings: Settings) -> str:
    """The backend name for these settings: as set, or picked from the model (``auto``)."""
    name = settings.backend if settings.backend != "auto" else guess_backend(settings.model, settings.base_url)
    if name != "transformers":
        for option in TRANSFORMERS_ONLY:
            if getattr(settings, option):
                raise ConfigError(
                    f"{option} needs the transformers backend, but model {settings.model!r} runs on {name} "
                    "(give a model folder or hub id, or set backend = transformers)"
                )
    return name


def load_backend(settings: Settings, *, backend: str | None = None, vocab_only: bool = False) -> Backend:
    """Load the model named in settings with the named backend (default: ``resolve_backend``)."""
    backend = backend or resolve_backend(settings)
    if backend not in _BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of: {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[backend](settings, vocab_only)


class RagqaLLM(LLM):
    """Any ragqa backend as a LangChain LLM (invoke, stream, batch; tokens counted by the model)."""

    backend: Any
    params: dict[str, Any] = {}
    stop_default: list[str] = []

    @property
    def _llm_type(self) -> str:
        return f"ragqa-{self.backend.name}"

    def get_num_tokens(self, text: str) -> int:
        return self.backend.count_tokens(text)

    def _call(self, prompt: str, stop: list[str] | None = None,
              run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> str:
        return "".join(c.text for c in self._stream(prompt, stop, run_manager, **kwargs))

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        for text in self.backend.stream(prompt, stop=(stop or []) + self.stop_default, **{**self.params, **kwargs}):
            chunk = GenerationChunk(text=text)
            if run_manager:
                run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk
