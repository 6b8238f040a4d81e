"""Batched, seeded, resumable sampling from a `LoadedModel`.

`sample(model, prompts, n=...)` renders each prompt with the chat template, tokenises it once and
prefills it once; the prompt's KV cache is then copied to its n sample rows (`reorder_cache` with
repeated indices) and `model.model.generate` continues from the cache. Generation goes through
`model.model`, so forward hooks on decoder layers (steering) apply to prefill and decoding alike.

Work is split into fixed batches of (prompt, sample) rows determined by the prompt list alone;
batch k is sampled under the seed `hash(seed, k)`. With `out=`, each finished batch's rows are
appended to JSONL; a rerun skips rows already written and regenerates only unfinished batches under
the same seeds, so an interrupted run ends with the same rows as an uninterrupted one (on the same
machine), without duplicates.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..kv_cache import cache_kwargs, output_cache
from ..models import LoadedModel, check_context
from ..positions import prompt_scope
from ..runs import JsonlLog
from ..validate import integer, number
from ..runs import RunDir, json_sha256, model_config

Message = dict[str, str]


def normalise_prompts(prompts: Sequence[Any]) -> list[dict[str, Any]]:
    """Accept message lists, plain strings (one user turn) or dicts with "id" and "messages".

    Args:
        prompts: the prompts.

    Returns:
        `{"id", "messages"}` dicts (ids default to the index).
    """
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            out.append({"id": str(i), "messages": [{"role": "user", "content": p}]})
        elif isinstance(p, dict) and "messages" in p:
            out.append({"id": str(p.get("id", i)), "messages": list(p["messages"])})
        elif isinstance(p, (list, tuple)) and all(isinstance(m, dict) and "role" in m for m in p):
            out.append({"id": str(i), "messages": list(p)})
        else:
            raise ValueError(f"prompt {i}: expected a message list, a string or a dict with 'messages', got {type(p).__name__}")
    ids = [p["id"] for p in out]
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        raise ValueError(f"duplicate prompt id {dup!r}")
    return out


_NOTICES: set[str] = set()


def _notice_once(msg: str) -> None:
    if msg not in _NOTICES:
        _NOTICES.add(msg)
        warnings.warn(msg, stacklevel=3)


def _batch_seed(seed: int, k: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{k}".encode()).digest()[:8], "little") % (2**63)


def stop_token_ids(model: LoadedModel) -> list[int]:
    """eos plus the chat end-of-turn tokens the tokenizer knows (<|im_end|>, <end_of_turn>, <|eot_id|>).

    Args:
        model: the model.

    Returns:
        The token ids that end a response.
    """
    tok = model.tokenizer
    ids = set()
    gen_eos = getattr(getattr(model.base_model, "generation_config", None), "eos_token_id", None)
    for x in ([gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])) + [tok.eos_token_id]:
        if x is not None:
            ids.add(int(x))
    for name in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>"):
        i = tok.convert_tokens_to_ids(name)
        if isinstance(i, int) and i != tok.unk_token_id and i >= 0:
            ids.add(i)
    return sorted(ids)


def use_static_cache(model: LoadedModel) -> bool:
    """Whether `sample(static_cache=None)` takes the static-KV-cache path (CUDA models only).

    Args:
        model: the model.

    Returns:
        True on CUDA.
    """
    return model.device.type == "cuda"


@torch.no_grad()
def _generate_batch(model, prompt_ids, rows, max_new_tokens, temperature, top_p, seed, stop_ids, static=False):
    """rows: list of (prompt_index, sample_index). One prefill per distinct prompt in the batch
    (dynamic cache); with `static`, HF's static KV cache is used and each row is prefilled."""
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else stop_ids[0]
    uniq = sorted({p for p, _ in rows})
    where = {p: i for i, p in enumerate(uniq)}
    seqs = [prompt_ids[p] for p in uniq]
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    att = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, n - len(s):] = torch.tensor(s)
        att[i, n - len(s):] = 1
    dev = model.device
    ids, att = ids.to(dev), att.to(dev)
    sel = torch.tensor([where[p] for p, _ in rows], device=dev)
    gen_kwargs: dict[str, Any] = dict(
        input_ids=ids[sel], attention_mask=att[sel], max_new_tokens=max_new_tokens, pad_token_id=pad,
        eos_token_id=stop_ids,
    )
    if static:
        from ..steering.hooks import is_steered

        gen_kwargs["cache_implementation"] = "static"
        if is_steered(model):
            # HF compiles the static-cache decode step on CUDA; a compiled graph would run the steering
            # hooks' Python position bookkeeping at trace time only. Keep the static cache, skip the compile.
            gen_kwargs["disable_compile"] = True
            _notice_once("steering is active: static-cache sampling runs without torch.compile (hooks stay exact)")
    else:
        # prefill all but the last prompt token once per distinct prompt; generate() feeds the last one
        pos = (att[:, :-1].cumsum(-1) - 1).clamp(min=0)
        with prompt_scope(model, n):  # steering contexts: these n - 1 tokens are prompt
            cache = output_cache(model.model(input_ids=ids[:, :-1], attention_mask=att[:, :-1], position_ids=pos,
                                             use_cache=True, logits_to_keep=1))
        if len(rows) != len(uniq) or bool((sel != torch.arange(len(uniq), device=dev)).any()):
            cache.reorder_cache(sel)  # one row per sample: copies the shared prompt's KV (skipped when 1:1)
        gen_kwargs.update(cache_kwargs(model, cache))
    if temperature and temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=0)
    else:
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    torch.manual_seed(seed)
    out = model.model.generate(**gen_kwargs)
    new = out[:, n:].cpu()
    texts, lengths, finished = [], [], []
    stop = set(stop_ids)
    for row in new.tolist():
        cut = next((j for j, t in enumerate(row) if t in stop), None)
        body = row if cut is None else row[:cut]
        texts.append(tok.decode(body, skip_special_tokens=True).strip())
        lengths.append(len(body))
        finished.append(cut is not None)
    return texts, lengths, finished


def sample(
    model: LoadedModel,
    prompts: Sequence[Any],
    *,
    n: int = 1,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    out: str | os.PathLike | JsonlLog | None = None,
    progress: bool = True,
    static_cache: bool | None = False,
    engine: Any = None,
    truncate: bool = False,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Sample `n` responses per prompt, resumably.

    With `out=`, the results file is bound (in its folder's manifest, stage `rows:<file name>`) to
    everything that determines its rows: the model's weights and adapter by content, the prompts'
    text, `n`, `max_new_tokens`, `temperature`, `top_p`, `seed`, `batch_size`, `truncate`, the KV
    cache kind and any active steering. A rerun with another configuration is refused with a
    one-line `RunConfigError` naming the fields; `overwrite=True` starts the file clean.

    Args:
        model: the model (steering contexts around the call apply).
        prompts: message lists, plain strings (one user turn) or dicts with "id" and "messages".
        n: samples per prompt.
        max_new_tokens: length limit of each response.
        temperature: 0 is greedy decoding.
        top_p: nucleus sampling.
        seed: sampling seed (each row's generator is seeded from it, so results do not depend on
            batching).
        batch_size: rows (prompt x sample) per generate call.
        out: a JSONL path or `JsonlLog`: rows are appended as produced; a rerun skips done rows.
        progress: show a tqdm bar.
        static_cache: True uses HF's static KV cache (compiled decoding on a GPU; every row is then
            prefilled separately); None picks it on CUDA (`use_static_cache`); False (default): the
            dynamic cache with one prefill per distinct prompt.
        engine: a `VLLMEngine` (`evals.vllm_engine`) to sample on vLLM with the same semantics and
            rows (`model` then only tokenises; steering contexts are refused).
        truncate: a prompt whose tokens plus `max_new_tokens` exceed the model's context length is
            refused (`DataError`) unless True, which drops its oldest tokens and records how many in
            the row (`prompt_truncated_tokens`) (the HF path; vLLM applies its own limit).
        overwrite: with `out=` bound to another configuration, delete its rows and start clean.

    Returns:
        Rows `{"prompt_id", "sample", "messages", "response", "n_tokens", "finished"}` in prompt
        order (including rows found in `out` from an earlier run).
    """
    n = integer("n", n, minimum=1)
    max_new_tokens = integer("max_new_tokens", max_new_tokens, minimum=1)
    batch_size = integer("batch_size", batch_size, minimum=1)
    temperature = number("temperature", temperature, minimum=0.0)
    top_p = number("top_p", top_p, minimum=0.0, maximum=1.0, exclusive_minimum=True)
    seed = integer("seed", seed)
    if engine is not None:  # a VLLMEngine (evals.vllm_engine, which imports this module, not the reverse)
        return engine.sample(model, prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=top_p, seed=seed, out=out, progress=progress)
    items = normalise_prompts(prompts)
    static = use_static_cache(model) if static_cache is None else bool(static_cache)
    log = out if isinstance(out, JsonlLog) else (JsonlLog(Path(out), ("prompt_id", "sample")) if out else None)
    run = None
    if log is not None:  # bind the file to what determines its rows; the RunDir holds the lock while sampling
        from ..steering.hooks import active_steering

        run = RunDir(log.path.parent)
        run.bind(f"rows:{log.path.name}", {
            "model": model_config(model), "prompts_sha256": json_sha256(items), "n": n,
            "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed,
            "batch_size": batch_size, "truncate": bool(truncate), "static_cache": static,
            "steering": active_steering(model)}, overwrite=overwrite, outputs=[log.path.name])
        log = JsonlLog(log.path, ("prompt_id", "sample"), root=run.path)
    done: dict[tuple, dict] = {}
    if log is not None:
        for r in log.read():  # each (prompt_id, sample) once
            done[(str(r["prompt_id"]), int(r["sample"]))] = r
    prompt_ids = [model.encode_prompt(it["messages"]).tolist() for it in items]
    _, cut = check_context(model, [len(x) for x in prompt_ids], reserve=max_new_tokens, truncate=truncate,
                           names=[it["id"] for it in items])
    prompt_ids = [x[c:] for x, c in zip(prompt_ids, cut)]  # keeps the end: the generation header
    all_rows = [(p, s) for p in range(len(items)) for s in range(n)]
    batches = [all_rows[i:i + batch_size] for i in range(0, len(all_rows), batch_size)]
    stop_ids = stop_token_ids(model)
    results: dict[tuple[int, int], dict] = {}
    todo = 0
    for rows in batches:
        for p, s in rows:
            if (items[p]["id"], s) in done:
                results[(p, s)] = done[(items[p]["id"], s)]
            else:
                todo += 1
    bar = tqdm(total=todo, desc="sampling", unit="resp", disable=not progress or todo == 0)
    for k, rows in enumerate(batches):
        missing = [(p, s) for p, s in rows if (p, s) not in results]
        if not missing:
            continue
        texts, lens, fin = _generate_batch(model, prompt_ids, rows, max_new_tokens, temperature, top_p,
                                           _batch_seed(seed, k), stop_ids, static)
        for (p, s), text, ln, f in zip(rows, texts, lens, fin):
            if (p, s) in results:
                continue  # written by an earlier, interrupted run (same seed -> same text)
            row = {"prompt_id": items[p]["id"], "sample": s, "messages": items[p]["messages"],
                   "response": text, "n_tokens": ln, "finished": f,
                   **({"prompt_truncated_tokens": cut[p]} if cut[p] else {})}
            results[(p, s)] = row
            if log is not None:
                log.append(row)
        bar.update(len(missing))
        bar.set_postfix(tokens=sum(lens))
    bar.close()
    return [results[r] for r in all_rows]
