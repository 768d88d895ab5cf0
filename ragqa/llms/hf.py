"""The transformers backend: a Hugging Face causal LM on CPU or GPU, 4/8-bit through bitsandbytes
(torch and transformers are imported when a model loads)."""

from __future__ import annotations

import importlib.util
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragqa.chat_formats import AUTO, ChatFormat, get_chat_format, tokenizer_chat_format
from ragqa.config import Settings
from ragqa.errors import ConfigError, MissingDependencyError, ModelError, one_line
from ragqa.llms.base import GenerationStats, StopCutter, check_fits
from ragqa.models import resolve_hf_model

REPEAT_LAST_N = 64  # llama.cpp's default window for repeat_penalty


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
            raise ModelError(f"transformers cannot load {self.label}: {one_line(exc)}") from None
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
            raise ModelError(f"transformers cannot load {self.label}: {one_line(exc)}") from None
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

    def stream(self, prompt: str, stop: list[str] | None = None, *, stats: GenerationStats | None = None,
               **params: Any) -> Iterator[str]:
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

            torch.manual_seed(int(params.get("seed", self.settings.seed)))
            t0 = time.perf_counter()
            worker = threading.Thread(target=run, name="ragqa-generate", daemon=True)
            worker.start()
            try:
                yield from StopCutter(stop).cut(streamer)
            finally:
                clock.cancel.set()  # a stop string or an abandoned stream ends generate() at the next token
                worker.join()
                measured = clock.stats(len(ids), t0)
                if stats is not None:
                    stats.__dict__.update(measured.__dict__)
                self.stats = measured
            if failures:
                raise ModelError(f"transformers generation failed: {one_line(failures[0])}")


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
