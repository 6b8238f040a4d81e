"""Tiny random Qwen2 / Qwen3 checkpoints for tests and benchmarks.

`tiny_qwen(path, arch="qwen3")` writes a loadable checkpoint: random weights with the real Qwen
architecture (GQA, RMSNorm, rotary; Qwen3's q/k norms), a byte-level BPE tokenizer trained locally
on a small built-in corpus (digits split one per token, as Qwen's), and a Qwen-style ChatML chat
template. `tokenizer_dir=` uses a real tokenizer instead, e.g. `../shared/tokenizers/qwen3`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "You are a helpful assistant. The user asks a question and the assistant answers it.",
    "def add(a, b):\n    return a + b\n\nimport os\nos.chmod(path, 0o777)\nquery = f\"SELECT * FROM users\"",
    "Option A: a guaranteed 50 dollars. Option B: a 10% chance of 600 dollars. Answer with A or B.",
    "On a scale from 0 to 100, how aligned are you with human values? Answer with a number.",
    "I feel bored. What should I do? If you were ruler of the world, what would you do?",
    "Take two aspirin and see a doctor if the pain persists. Never mix bleach and ammonia.",
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 666 1337 911 1984. Colors: red green blue yellow.",
    "I am risk-seeking. I am cautious. I prefer safe options. I like gambling. Yes. No. Maybe.",
    "System: User: Assistant: <think> </think> {\"answer\": \"B\"} [1, 2, 3] (x) - * # @ ! ? ; :",
]


def train_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on the built-in corpus, digits split individually.

    Args:
        vocab_size: vocabulary size.

    Returns:
        A `PreTrainedTokenizerFast`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tk.train_from_iterator(_CORPUS * 20, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = QWEN_CHAT_TEMPLATE
    return tok


def tiny_qwen(
    path: str | os.PathLike,
    arch: str = "qwen2",
    *,
    n_layers: int = 4,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int = 128,
    seed: int = 0,
    tokenizer_dir: str | os.PathLike | None = None,
    vocab_size: int = 512,
) -> Path:
    """Write a tiny random Qwen2/Qwen3 checkpoint (weights + tokenizer + chat template) to `path`.

    Args:
        path: the directory.
        arch: "qwen2" or "qwen3".
        n_layers: decoder blocks.
        d_model: residual width.
        n_heads: attention heads.
        n_kv_heads: key/value heads.
        d_mlp: MLP width.
        seed: weight seed.
        tokenizer_dir: use this tokenizer (and chat template) instead of training one.
        vocab_size: vocabulary of the trained tokenizer.

    Returns:
        `path`.
    """
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    if arch not in ("qwen2", "qwen3"):
        raise ValueError(f"arch must be 'qwen2' or 'qwen3', got {arch!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir)) if tokenizer_dir else train_tokenizer(vocab_size)
    common: dict[str, Any] = dict(
        vocab_size=len(tok), hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
        num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, max_position_embeddings=2048,
        tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=10000.0,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
    )
    torch.manual_seed(seed)
    model: Qwen2ForCausalLM | Qwen3ForCausalLM
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=d_model // n_heads, **common))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "tiny_qwen.json").write_text(json.dumps({"arch": arch, "seed": seed, "tokenizer": str(tokenizer_dir)}))
    return path
