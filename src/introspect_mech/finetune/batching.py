"""Tokenisation and padding-free packing.

Each example becomes `(input_ids, loss_mask)` where `loss_mask[t]` says token t is a training
target (assistant content + its end-of-turn token by default). A micro-batch is one row that
concatenates several examples; `position_ids` restart at 0 for each example, which transformers
turns into a block-diagonal causal mask (sdpa/eager) or varlen flash attention, so no example sees
another and no compute is spent on padding. The loss positions are stored already shifted: hidden
state at index i predicts `targets[i]` = token i+1 of the same example.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from ..data.records import Record


@dataclass
class Example:
    """One tokenised training example: token ids and which of them carry loss."""

    input_ids: list[int]
    loss_mask: list[bool]  # same length as input_ids

    @property
    def n_loss(self) -> int:
        """Loss-carrying tokens (token 0 can never be a target: nothing predicts it)."""
        return sum(self.loss_mask[1:])


@dataclass
class MicroBatch:
    """Several examples packed into one row (no padding), with the positions that carry loss."""

    input_ids: Int[Tensor, "1 seq"]
    position_ids: Int[Tensor, "1 seq"]
    pred_index: Int[Tensor, " n_loss"]  # hidden-state positions whose next token carries loss
    targets: Int[Tensor, " n_loss"]  # the token each of those positions must predict
    cu_seq_lens: Int[Tensor, " n_examples_plus_1"]  # example boundaries in the row (varlen attention)
    n_tokens: int

    @property
    def max_len(self) -> int:
        """Length of the longest packed example."""
        return int((self.cu_seq_lens[1:] - self.cu_seq_lens[:-1]).max())


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """The messages with `system_prompt` injected when they have no system turn.

    Args:
        messages: the conversation.
        system_prompt: the system prompt (None: unchanged).

    Returns:
        The messages.
    """
    if system_prompt is None or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def tokenize_records(loaded, records: Sequence[Record], *, max_seq_len: int, assistant_only: bool = True,
                     system_prompt: str | None = None, progress: bool = False) -> tuple[list[Example], dict]:
    """Tokenise chat records with the model's template.

    Args:
        loaded: the `LoadedModel`.
        records: chat records.
        max_seq_len: longer examples are truncated (counted).
        assistant_only: loss on assistant tokens (+ their end-of-turn token) only.
        system_prompt: injected into records without a system turn.
        progress: show a tqdm bar.

    Returns:
        The examples, and counts (truncated, dropped).
    """
    from tqdm.auto import tqdm

    out, truncated, dropped = [], 0, 0
    for rec in tqdm(records, desc="tokenize", unit="ex", disable=not progress, leave=False):
        ct = loaded.tokenize_chat(with_system(list(rec["messages"]), system_prompt), include_end_of_turn=True)
        ids = ct.input_ids.tolist()
        mask = ct.assistant_mask.tolist() if assistant_only else [True] * len(ids)
        if len(ids) > max_seq_len:
            truncated += 1
            ids, mask = ids[:max_seq_len], mask[:max_seq_len]
        ex = Example(ids, mask)
        if ex.n_loss == 0:
            dropped += 1  # nothing to learn (e.g. the answer was cut off by max_seq_len)
            continue
        out.append(ex)
    return out, {"examples": len(out), "truncated": truncated, "dropped_no_loss_tokens": dropped}


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The data order of one epoch: a permutation that depends only on (seed, epoch).

    Args:
        n: number of examples.
        seed: data seed.
        epoch: epoch index.

    Returns:
        A permutation of range(n).
    """
    idx = list(range(n))
    random.Random(f"{seed}-{epoch}").shuffle(idx)
    return idx


def step_groups(n: int, batch_size: int, seed: int, epochs: int) -> list[list[int]]:
    """Example indices of every optimizer step over all epochs (last step of an epoch may be short).

    Args:
        n: number of examples.
        batch_size: examples per optimizer step.
        seed: data seed.
        epochs: number of epochs.

    Returns:
        One list of example indices per optimizer step.
    """
    steps = []
    for e in range(epochs):
        order = epoch_order(n, seed, e)
        steps += [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return steps


def pack(examples: Sequence[Example], max_tokens: int) -> list[list[int]]:
    """Greedy first-fit-decreasing packing of example indices into micro-batches of <= max_tokens.

    Args:
        examples: tokenised examples.
        max_tokens: token budget of a micro-batch.

    Returns:
        Example indices per micro-batch.
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i].input_ids)
        for b, r in enumerate(room):
            if n <= r:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max_tokens - n)
    return bins


def collate(examples: Sequence[Example]) -> MicroBatch:
    """Concatenate examples into one padding-free row with per-example position ids.

    Args:
        examples: the examples of one micro-batch.

    Returns:
        The `MicroBatch`.
    """
    ids: list[int] = []
    pos: list[int] = []
    pred: list[int] = []
    tgt: list[int] = []
    cu = [0]
    off = 0
    for ex in examples:
        n = len(ex.input_ids)
        ids += ex.input_ids
        pos += range(n)
        for t in range(1, n):
            if ex.loss_mask[t]:
                pred.append(off + t - 1)
                tgt.append(ex.input_ids[t])
        off += n
        cu.append(off)
    return MicroBatch(
        input_ids=torch.tensor([ids]), position_ids=torch.tensor([pos]),
        pred_index=torch.tensor(pred, dtype=torch.long), targets=torch.tensor(tgt, dtype=torch.long),
        cu_seq_lens=torch.tensor(cu, dtype=torch.int32), n_tokens=off,
    )
