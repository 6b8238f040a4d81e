"""Sampling on vLLM with `evals.sample`'s semantics and output (`pip install -e ".[vllm]"`, a GPU).

    engine = VLLMEngine("Qwen/Qwen2.5-32B-Instruct", tensor_parallel_size=4)
    rows = sample_vllm(engine, tokenizer_model, prompts, n=100, max_new_tokens=600, out="runs/s")

* Prompts are tokenised by the project's own chat template (`LoadedModel.encode_prompt`, or any object
  with that method) and handed to vLLM as token ids, so both engines see identical prompts.
* `n` samples per prompt come from one vLLM request (`SamplingParams(n=...)`: one prefill), seeded per
  prompt from `seed` and the prompt id, so a killed run resumes exactly: a prompt whose n rows are not
  all in `out` is generated again with the same seed and only its missing rows are appended.
* `temperature=0` is greedy. Generation stops at the same stop tokens as the HF path
  (`evals.sampling.stop_token_ids`); `n_tokens` counts the answer without the stop token and
  `finished` says whether a stop token ended it.
* LoRA adapters go through vLLM's LoRA requests (`adapter=` a PEFT adapter directory).
* Steering hooks live on the HF model and cannot reach a vLLM engine: `sample_vllm` refuses with a
  one-line error while a steering context is active on the tokenizer model (use `evals.sample`).

The call contract is tested on CPU against a minimal stand-in of the vLLM API
(`tests/evals/test_vllm_engine.py`); the real engine needs a GPU.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from ..runs import JsonlLog
from .sampling import normalise_prompts, stop_token_ids


class VLLMEngine:
    """A vLLM `LLM` plus what `sample_vllm` needs to call it.

    Args:
        model: a hub id or checkpoint directory (the base model).
        adapter: optional PEFT LoRA adapter directory, applied through a vLLM `LoRARequest`.
        tensor_parallel_size: GPUs to shard the model over.
        max_lora_rank: the largest adapter rank vLLM must accept (32 covers the papers' rsLoRA).
        llm: an already-built `vllm.LLM` (or a stand-in with the same `generate`), instead of building one.
        **llm_kwargs: passed to `vllm.LLM` (e.g. `dtype`, `gpu_memory_utilization`, `max_model_len`).
    """

    def __init__(self, model: str | os.PathLike, *, adapter: str | os.PathLike | None = None,
                 tensor_parallel_size: int = 1, max_lora_rank: int = 32, llm: Any = None, **llm_kwargs: Any):
        self.model, self.adapter = str(model), (str(adapter) if adapter is not None else None)
        if llm is None:
            try:
                from vllm import LLM
            except ImportError as e:
                raise ImportError('vLLM is not installed: pip install -e ".[vllm]" (needs a CUDA GPU)') from e
            if self.adapter is not None:
                llm_kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank)
            llm = LLM(model=self.model, tensor_parallel_size=tensor_parallel_size, **llm_kwargs)
        self.llm = llm

    def sample(self, tokenizer_model: Any, prompts: Sequence[Any], **kwargs: Any) -> list[dict[str, Any]]:
        """`sample_vllm(self, ...)`: how `evals.sample(engine=...)` dispatches here without importing this module.

        Args:
            tokenizer_model: the `LoadedModel` whose tokenizer and chat template render the prompts.
            prompts: as `evals.sample`.
            **kwargs: `sample_vllm`'s keywords.

        Returns:
            The rows.
        """
        return sample_vllm(self, tokenizer_model, prompts, **kwargs)

    def sampling_params(self, **kwargs: Any) -> Any:
        """A `vllm.SamplingParams` (imported lazily, so a stand-in engine can override this).

        Args:
            **kwargs: the `SamplingParams` fields (n, max_tokens, temperature, top_p, seed, ...).

        Returns:
            The sampling parameters.
        """
        from vllm import SamplingParams

        return SamplingParams(**kwargs)

    def lora_request(self) -> Any:
        if self.adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(Path(self.adapter).name or "adapter", 1, self.adapter)


def _prompt_seed(seed: int, prompt_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()[:4], "little")


def sample_vllm(
    engine: VLLMEngine,
    tokenizer_model: Any,
    prompts: Sequence[Any],
    *,
    n: int = 1,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    out: str | os.PathLike | JsonlLog | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """`evals.sample` on a vLLM engine: the same arguments, rows and resumable JSONL.

    Args:
        engine: a `VLLMEngine`.
        tokenizer_model: the `LoadedModel` (or any object with `encode_prompt(messages)`, `tokenizer`
            and `base_model`) whose chat template tokenises the prompts.
        prompts: message lists, strings, or dicts with "messages" (and optional "id").
        n: samples per prompt.
        max_new_tokens: answer budget (tokens).
        temperature: sampling temperature; 0 = greedy.
        top_p: nucleus-sampling mass (1.0 = off).
        seed: run seed; each prompt's request is seeded from it and the prompt id.
        out: JSONL file (or `JsonlLog`) appended as rows are produced; rows already there are reused.
        progress: show a tqdm bar.

    Returns:
        Rows `{"prompt_id", "sample", "messages", "response", "n_tokens", "finished"}` in prompt order.
    """
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"n and max_new_tokens must be >= 1 (got {n}, {max_new_tokens})")
    from ..steering.hooks import is_steered

    if is_steered(tokenizer_model):
        raise RuntimeError("a steering context is active on the model, but steering hooks cannot reach a vLLM "
                           "engine: sample with evals.sample (the HF path) instead")
    items = normalise_prompts(prompts)
    log = out if isinstance(out, JsonlLog) else (JsonlLog(Path(out), ("prompt_id", "sample")) if out else None)
    done: dict[tuple[str, int], dict] = {}
    if log is not None:
        for r in log.rows():
            done[(str(r["prompt_id"]), int(r["sample"]))] = r
    stop = stop_token_ids(tokenizer_model)
    todo = [i for i, it in enumerate(items) if any((it["id"], s) not in done for s in range(n))]
    tok = tokenizer_model.tokenizer
    if todo:
        requests = [{"prompt_token_ids": tokenizer_model.encode_prompt(items[i]["messages"]).tolist()} for i in todo]
        params = [engine.sampling_params(
            n=n, max_tokens=max_new_tokens, temperature=float(temperature), top_p=float(top_p) if temperature else 1.0,
            seed=_prompt_seed(seed, items[i]["id"]), stop_token_ids=stop, skip_special_tokens=True)
            for i in todo]
        bar = tqdm(total=len(todo) * n, desc="sampling (vLLM)", unit="resp", disable=not progress)
        outputs = engine.llm.generate(requests, params, lora_request=engine.lora_request(), use_tqdm=False)
        if len(outputs) != len(todo):
            raise RuntimeError(f"vLLM returned {len(outputs)} results for {len(todo)} prompts")
        for i, res in zip(todo, outputs):
            if len(res.outputs) != n:
                raise RuntimeError(f"vLLM returned {len(res.outputs)} samples for prompt {items[i]['id']!r}, expected {n}")
            for s, o in enumerate(res.outputs):
                key = (items[i]["id"], s)
                if key in done:
                    continue
                ids = list(o.token_ids)
                finished = bool(ids) and ids[-1] in stop or o.finish_reason == "stop"
                body = ids[:-1] if ids and ids[-1] in stop else ids
                row = {"prompt_id": items[i]["id"], "sample": s, "messages": items[i]["messages"],
                       "response": tok.decode(body, skip_special_tokens=True).strip(), "n_tokens": len(body),
                       "finished": bool(finished)}
                done[key] = row
                if log is not None:
                    log.append(row)
            bar.update(n)
        bar.close()
    return [done[(it["id"], s)] for it in items for s in range(n)]
