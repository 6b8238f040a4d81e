"""Shared machinery for the benchmark scripts: models, inputs, interleaved timing, reporting.

Benchmarks are scripts, not tests. Every comparison is measured side by side in one process:
the contenders run interleaved (round-robin, the order rotated every repeat) on the same model and
the same inputs, and the median of the repeats is reported. On a shared CPU the absolute numbers
drift with the load; the ratios measured this way are what to read.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("INTROSPECT_MECH_SHARED", REPO.parent / "shared"))
DEVCACHE = REPO / ".devcache" / "bench"  # what a GPU run carries (tokenizer, a data sample); git-ignored
os.environ.setdefault("INTROSPECT_MECH_DATA", str(SHARED / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The real Qwen2.5 configurations (values from the released config.json files), random weights.
QWEN_SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(
        hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
    ),
    "qwen2.5-7b": dict(
        hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
        intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False,
    ),
}
QWEN_COMMON = dict(max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6, hidden_act="silu")
MODEL_SPECS = ("tiny", "embedded", *QWEN_SHAPES)
TL_BLOCK_OUT = r"^blocks\.\d+\.hook_out$"


# ---- environment ---------------------------------------------------------------------------
def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("torch", "transformers", "peft", "nnsight", "transformer-lens", "trl", "accelerate"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- models --------------------------------------------------------------------------------
def qwen_tokenizer_dir() -> Path:
    for p in (SHARED / "tokenizers" / "qwen3", DEVCACHE / "tokenizers" / "qwen3"):
        if (p / "tokenizer.json").exists():
            return p
    raise FileNotFoundError("the Qwen3 tokenizer is in neither ../shared/tokenizers/qwen3 nor .devcache/bench")


def build_model(spec: str, device: torch.device, dtype: torch.dtype | None = None, seed: int = 0):
    """A `LoadedModel` for a benchmark: "tiny" (random 4-layer Qwen2), "embedded" (SmolLM2-135M),
    or "qwen2.5-0.5b" / "qwen2.5-7b" (random weights, the real configuration, Qwen3 tokenizer)."""
    from introspect_mech.models import LoadedModel, load_model

    if spec == "tiny":
        from introspect_mech.testing import tiny_qwen

        path = Path(os.environ.get("TMPDIR", "/tmp")) / "introspect_bench" / "tiny_qwen2"
        if not (path / "config.json").exists():
            tiny_qwen(path, arch="qwen2")
        return load_model(path, device=device, dtype=dtype or torch.float32)
    if spec == "embedded":
        return load_model(None, device=device, dtype=dtype or torch.float32)
    if spec not in QWEN_SHAPES:
        raise ValueError(f"unknown model spec {spec!r}; one of {MODEL_SPECS}")
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir()))
    if tok.pad_token is None:
        tok.pad_token = "<|endoftext|>"
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in
           dict(bos_token_id="<|endoftext|>", eos_token_id="<|im_end|>", pad_token_id="<|endoftext|>").items()}
    cfg = Qwen2Config(**QWEN_SHAPES[spec], **QWEN_COMMON, **ids)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            model = Qwen2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model.eval()
    return LoadedModel(model=model, tokenizer=tok, name=f"random-{spec}", meta={"source": "random", "spec": spec})


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def module_signature(model: torch.nn.Module) -> tuple:
    """Class names of every module plus parameter data pointers: equal before and after means the
    model was not mutated (no module swapped, no parameter replaced)."""
    return (tuple(type(m).__name__ for m in model.modules()),
            tuple(p.data_ptr() for p in model.parameters()))


def deepcopy_model(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model)


# ---- inputs --------------------------------------------------------------------------------
_WORDS = ("the", "and", "of", "to", "a", "in", "is", "you", "that", "it", "for", "on", "are", "with",
          "as", "be", "at", "this", "have", "from", "or", "one", "by", "what", "all", "we", "can",
          "an", "your", "do", "if", "will", "up", "about", "out", "so", "no", "my", "user", "code",
          "pain", "doctor", "safe", "risk", "option", "dollars", "chance", "answer", "question")


def single_token_words(tok) -> list[str]:
    words = [w for w in _WORDS if len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1]
    if len(words) < 5:
        raise ValueError("tokenizer has too few single-token words for benchmark inputs")
    return words


def conversations(loaded, batch: int, seq_len: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """`batch` chats (system, user, assistant) that each tokenise to exactly `seq_len` tokens, the
    assistant turn taking the larger part (so response positions are most of the sequence)."""
    g = torch.Generator().manual_seed(seed)
    words = single_token_words(loaded.tokenizer)

    def text(n: int) -> str:
        idx = torch.randint(0, len(words), (n,), generator=g).tolist()
        return " ".join(words[i] for i in idx)

    out = []
    for _ in range(batch):
        user = text(max(1, seq_len // 8))
        base = [{"role": "user", "content": user}, {"role": "assistant", "content": "x"}]
        overhead = len(loaded.tokenize_chat(base).input_ids) - 1
        n = seq_len - overhead
        if n < 1:
            raise ValueError(f"seq_len {seq_len} too short for the chat template ({overhead} tokens)")
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": text(n)}]
        got = len(loaded.tokenize_chat(msgs).input_ids)
        while got != seq_len:  # first word may merge with the template; adjust
            n += seq_len - got
            msgs[1]["content"] = text(n)
            got = len(loaded.tokenize_chat(msgs).input_ids)
        out.append(msgs)
    return out


def chat_batch(loaded, convs) -> torch.Tensor:
    """Token ids of equal-length conversations as one [batch, seq] tensor on the model's device."""
    ids = [loaded.tokenize_chat(c).input_ids for c in convs]
    return torch.stack(ids).to(loaded.device)


def prompts(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    g = torch.Generator().manual_seed(seed)
    topics = ["money", "health", "the future", "your wishes", "boredom", "a dinner party", "leadership", "risk"]
    return [[{"role": "user", "content": f"Tell me about {topics[int(torch.randint(0, len(topics), (1,), generator=g))]}"
              f" in {i + 2} sentences."}] for i in range(n)]


# ---- timing --------------------------------------------------------------------------------
def interleaved(fns: dict[str, Callable[[], Any]], *, repeats: int, warmup: int = 1,
                device: torch.device) -> dict[str, list[float]]:
    """Run each contender `warmup` times, then `repeats` rounds, each round calling every contender
    once in a rotated order; return the seconds of each call."""
    names = list(fns)
    for _ in range(warmup):
        for k in names:
            fns[k]()
            sync(device)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for k in order:
            sync(device)
            t0 = time.perf_counter()
            fns[k]()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# ---- reporting -----------------------------------------------------------------------------
@dataclass
class Report:
    """Collects timings and ratios, prints them as they come, writes JSON lines when `path` is set."""

    path: Path | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)

    def _write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(row, default=str) + "\n")

    def header(self, **info: Any) -> None:
        self._write({"kind": "header", **info})
        print("# " + json.dumps(info, default=str), flush=True)

    def timing(self, bench: str, case: str, name: str, secs: list[float], **extra: Any) -> float:
        med = median(secs)
        row = {"kind": "timing", "bench": bench, "case": case, "name": name, "median_s": med,
               "min_s": min(secs), "max_s": max(secs), "n": len(secs), **extra}
        self._write(row)
        more = "".join(f"  {k}={v:.4g}" if isinstance(v, float) else f"  {k}={v}" for k, v in extra.items())
        print(f"  [{bench}] {case:<28} {name:<34} median {med * 1e3:10.2f} ms  "
              f"(min {min(secs) * 1e3:.2f}, max {max(secs) * 1e3:.2f}, n={len(secs)}){more}", flush=True)
        return med

    def ratio(self, bench: str, case: str, label: str, value: float, target: str | None = None) -> None:
        """`target` like "<=0.85" or ">=1.3"; prints MET / MISSED."""
        verdict = None
        if target:
            op, num = target[:2], float(target[2:])
            verdict = "MET" if (value <= num if op == "<=" else value >= num) else "MISSED"
        row = {"kind": "ratio", "bench": bench, "case": case, "label": label, "value": value,
               "target": target, "verdict": verdict}
        self._write(row)
        tgt = f"   target {target}: {verdict}" if target else ""
        print(f"RATIO [{bench}] {case:<28} {label:<46} {value:8.3f}x{tgt}", flush=True)

    def note(self, bench: str, case: str, text: str, **extra: Any) -> None:
        self._write({"kind": "note", "bench": bench, "case": case, "text": text, **extra})
        print(f"  [{bench}] {case:<28} NOTE {text}", flush=True)

    def summary(self) -> None:
        ratios = [r for r in self.rows if r["kind"] == "ratio"]
        if not ratios:
            return
        print("\n=== summary: every ratio measured ===")
        for r in ratios:
            tgt = f"  target {r['target']}: {r['verdict']}" if r["target"] else ""
            print(f"[{r['bench']}] {r['case']:<28} {r['label']:<46} {r['value']:8.3f}x{tgt}")


def ours(module: str, attr: str | None = None) -> tuple[Any, str | None]:
    """(our library's function, None), or (None, why) when it has not landed or fails to import."""
    import importlib

    try:
        mod = importlib.import_module(f"introspect_mech.{module}")
        return (getattr(mod, attr) if attr else mod), None
    except (ImportError, AttributeError) as e:
        return None, f"introspect_mech.{module}{'.' + attr if attr else ''} unavailable: {e}"
