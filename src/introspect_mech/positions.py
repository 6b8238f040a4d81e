"""Absolute token positions of each forward through a model's decoder blocks, for position-dependent
steering (`steering.add(..., positions="response")` and friends).

See `steering.hooks` for the position modes. The rule never depends on the name of a keyword that
transformers passes to its decoder layers (5.24 renamed the cache keyword): inside `generate` the
tracker keeps its own running token count, started at the length of any KV cache handed to
`generate`; a KV cache among block 0's inputs is found by its type and must agree with that count.
A forward whose positions cannot be determined raises `PositionError`.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from torch import Tensor, nn

from .layers import decoder_layers

if TYPE_CHECKING:
    from .models import LoadedModel


def _layers_of(model: LoadedModel | nn.Module) -> nn.ModuleList:
    """A model's decoder blocks: a `LoadedModel`'s `.layers`, else `layers.decoder_layers` of the module (the same
    list either way; no import of `models`, which sits above this module)."""
    layers = getattr(model, "layers", None)
    return layers if isinstance(layers, nn.ModuleList) else decoder_layers(model)  # type: ignore[arg-type]


class PositionError(RuntimeError):
    """The absolute positions of a forward's tokens could not be determined (never guessed)."""


def _find_cache(args: tuple, kwargs: dict) -> Any:
    """The KV cache among a module call's inputs, found by type (transformers' public `Cache`
    class), never by keyword name: the name changed across releases (`past_key_values` -> `cache`)."""
    from transformers.cache_utils import Cache

    for v in (*args, *kwargs.values()):
        if isinstance(v, Cache):
            return v
    return None


def _cache_len(cache: Any) -> int:
    try:
        return int(cache.get_seq_length())
    except Exception as e:  # noqa: BLE001 - a cache we cannot measure must not be guessed
        raise PositionError(f"steering positions: cannot read the length of the KV cache "
                            f"({type(cache).__name__}.get_seq_length failed: {e})") from None


@dataclass
class _PositionState:
    """Per-forward facts, set by the tracker's pre-hook on block 0 before any steering hook runs:
    absolute position of this forward's first token (`past`), its token count (`seq`) and the prompt
    length of the enclosing generation (`prompt_len`, None outside `generate` / `prompt_scope`)."""

    past: int = 0
    seq: int = 0
    prompt_len: int | None = None


class _Tracker:
    """Absolute token positions of every forward through one model's decoder blocks, shared by all
    steering contexts on that model (registered while at least one position-dependent context is
    active, removed with the last one).

    * `generate` is wrapped (instance attribute, removed on exit) to record the prompt length `P`
      of the running call and to start a running token count at the length of any KV cache given
      to it; each forward through block 0 then covers absolute positions `[count, count + seq)` and
      advances the count. Where block 0's inputs carry a KV cache (found by type), its length must
      equal the count, else `PositionError` -- a mismatch is never resolved silently.
    * Outside `generate` a forward starts at the length of the KV cache in its inputs (0 without
      one). `prompt_scope(model, P)` declares the prompt length for manual prefills.
    """

    def __init__(self, owner: nn.Module | None, layers_mod: nn.ModuleList):
        self.owner, self.layers_mod, self.users = owner, layers_mod, 0
        self.state = _PositionState()
        self.count: int | None = None  # running absolute count inside generate (None outside)
        self.prompt_len: int | None = None
        self.handle = layers_mod[0].register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        self.wrapper = None
        generate = getattr(owner, "generate", None) if owner is not None else None
        if owner is not None and callable(generate):
            self.wrapper = self._wrap_generate(generate)
            owner.__dict__["generate"] = self.wrapper

    # -- generate() and manual prompt scopes
    def _wrap_generate(self, orig: Callable) -> Callable:
        def generate(*args, **kwargs):
            ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], Tensor) else None)
            if ids is None and isinstance(kwargs.get("inputs_embeds"), Tensor):
                ids = kwargs["inputs_embeds"][..., 0]
            if ids is None:
                raise PositionError("steering positions: generate() was called without input_ids or "
                                    "inputs_embeds, so the prompt length is unknown")
            cache = _find_cache(args, kwargs)
            start = _cache_len(cache) if cache is not None else 0
            with self.scope(int(ids.shape[-1]), start):
                return orig(*args, **kwargs)

        generate.__wrapped__ = orig  # type: ignore[attr-defined]
        return generate

    @contextlib.contextmanager
    def scope(self, prompt_len: int, start: int | None) -> Iterator[None]:
        outer = (self.prompt_len, self.count)
        self.prompt_len, self.count = prompt_len, start
        try:
            yield
        finally:
            self.prompt_len, self.count = outer

    # -- the pre-hook on block 0
    def _pre_hook(self, module, args, kwargs):
        h = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(h, Tensor):
            raise PositionError("steering positions: block 0 was called without a hidden-states tensor")
        seq = int(h.shape[-2])
        cache = _find_cache(args, kwargs)
        cache_past = _cache_len(cache) if cache is not None else None
        if self.count is not None:  # inside generate(): our own running count
            if cache_past is not None:
                if cache_past != self.count:
                    raise PositionError(
                        f"steering positions: the KV cache holds {cache_past} tokens but this generate() "
                        f"call has produced {self.count}; refusing to guess which positions to steer")
                past = cache_past
            elif seq > self.count:  # no cache (use_cache=False): every forward recomputes from 0
                past = 0
            else:
                raise PositionError(
                    f"steering positions: a {seq}-token forward after {self.count} tokens without a KV "
                    "cache in block 0's inputs; its absolute positions cannot be determined")
            self.count = past + seq
        else:
            past = cache_past or 0
        self.state = _PositionState(past=past, seq=seq, prompt_len=self.prompt_len)
        return None

    def remove(self) -> None:
        self.handle.remove()
        if self.owner is not None and self.wrapper is not None and self.owner.__dict__.get("generate") is self.wrapper:
            del self.owner.__dict__["generate"]


_TRACKERS: "weakref.WeakKeyDictionary[nn.ModuleList, _Tracker]" = weakref.WeakKeyDictionary()


def _tracker_enter(owner: nn.Module | None, layers_mod: nn.ModuleList) -> _Tracker:
    t = _TRACKERS.get(layers_mod)
    if t is None:
        t = _TRACKERS[layers_mod] = _Tracker(owner, layers_mod)
    t.users += 1
    return t


def _tracker_exit(t: _Tracker | None) -> None:
    if t is None:
        return
    t.users -= 1
    if t.users <= 0:
        t.remove()
        _TRACKERS.pop(t.layers_mod, None)


@contextlib.contextmanager
def prompt_scope(model: LoadedModel | nn.Module, prompt_len: int) -> Iterator[None]:
    """Declare that forwards inside the block belong to a generation whose prompt has `prompt_len` tokens.

    Absolute positions `< prompt_len` are prompt, e.g. for a manual prefill of part of the prompt
    before `generate(..., <cache>)` (as `evals.sample` does). `generate` sets this by itself.
    A no-op when no position-dependent steering context is active on the model.

    Args:
        model: the `LoadedModel` (or its module) the steering contexts are on.
        prompt_len: the prompt's token count.

    Yields:
        Nothing; the scope lasts for the `with` block.
    """
    t = _TRACKERS.get(_layers_of(model))
    if t is None:
        yield
        return
    with t.scope(int(prompt_len), None):
        yield


def selected_range(positions: str, state: _PositionState) -> tuple[int, int]:
    """The half-open range `[lo, hi)` of this forward's token indices that a position mode selects.

    * `"prompt"`: absolute positions `< P`; `"response"`: positions `>= P`;
    * `"last_prompt_and_response"`: positions `>= P - 1` -- the last prompt token and every generated
      one, i.e. inside `generate` the last position of every forward (the persona-vectors steerer's
      rule for "response").
    Outside a generation (P unknown) a forward from an empty cache is all prompt (for
    `"last_prompt_and_response"`: its last token) and a forward extending a cache is all response.

    Args:
        positions: "prompt", "response" or "last_prompt_and_response".
        state: this forward's `past` (absolute position of its first token), `seq` (token count)
            and `prompt_len` (P; None outside a generation), as the tracker recorded them.

    Returns:
        `(lo, hi)` with `0 <= lo <= hi <= seq`.

    Raises:
        ValueError: an unknown position mode.
    """
    past, seq, P = state.past, state.seq, state.prompt_len
    if P is None:
        if past == 0:
            n_prompt, start_lpr = seq, max(seq - 1, 0)
        else:
            n_prompt, start_lpr = 0, 0
    else:
        n_prompt = min(max(P - past, 0), seq)
        start_lpr = min(max(P - 1 - past, 0), seq)
    if positions == "prompt":
        return 0, n_prompt
    if positions == "response":
        return n_prompt, seq
    if positions == "last_prompt_and_response":
        return start_lpr, seq
    raise ValueError(f"unknown position mode {positions!r}")
