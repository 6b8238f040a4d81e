"""Concept vectors for injected-thought experiments (Lindsey 2025, "Emergent introspective awareness").

Recipe (the anchor's): the residual-stream activation on the prompt "Tell me about {word}" minus the
mean activation over a list of baseline words, per decoder block:

    v_l(word) = h_l("Tell me about {word}") - mean_{b in baseline, b != word} h_l("Tell me about {b}")

read at the last prompt token (`positions="last_prompt"`, the token right before the answer: the
anchor read the "Assistant:" colon) or averaged over the model's own greedy answer
(`positions="response_mean"`). Each vector is returned as a `Direction` whose `norms` are the raw
difference norms, so `steering.add(model, d, layers=[L], alpha=s, scale="norm")` injects `s` times
the raw concept vector (the anchor's "injection strength").

Word lists ship with the study (`concept_words.yaml` beside this module: `concrete`, `abstract`, `baseline`);
`load_words(path_or_kind)` also reads a user's YAML (same keys) or plain-text list (one word a line).
(This was `probes.concepts`; the old name resolves here for one release with a DeprecationWarning.)
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml
from jaxtyping import Float
from torch import Tensor

from ...activations import cache
from ...direction import Direction
from ...evals.sampling import sample
from ...layers import resolve_layers

PROMPT = "Tell me about {word}"
KINDS = ("concrete", "abstract", "baseline")
POSITIONS = ("last_prompt", "response_mean")


def _read_lists(text: str, src: str) -> dict[str, list[str]]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{src}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{src}: expected a mapping of list name -> words")
    for k, v in data.items():
        if not isinstance(v, list) or not v or not all(isinstance(w, str) and w.strip() for w in v):
            raise ValueError(f"{src}: field {k!r} must be a non-empty list of non-empty strings")
    return {str(k): [w.strip() for w in v] for k, v in data.items()}


def word_lists() -> dict[str, list[str]]:
    """The shipped lists: {"concrete": [...], "abstract": [...], "baseline": [...]}."""
    text = resources.files(__package__).joinpath("concept_words.yaml").read_text(encoding="utf-8")
    return _read_lists(text, "concept_words.yaml")


def load_words(source: str | os.PathLike = "concrete", key: str | None = None) -> list[str]:
    """Words of a shipped list, of a user's YAML file or of a text file.

    Args:
        source: a shipped list name (`"concrete"`, `"abstract"`, `"baseline"`), a `.yaml`/`.yml`
            file (same keys) or a text file (one word a line; blank lines and `#` comments skipped).
        key: which list of a YAML file (default: `concrete`, or the file's only list).

    Returns:
        The words (stripped).

    Raises:
        FileNotFoundError: `source` is neither a shipped list nor an existing file.
        ValueError: invalid YAML, a missing `key`, an invalid word or no words (file and line/field named).
    """
    if isinstance(source, str) and source in KINDS and not Path(source).exists():
        return word_lists()[source]
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such word list (shipped lists: {', '.join(KINDS)})")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        lists = _read_lists(text, str(path))
        if key is None:
            key = "concrete" if "concrete" in lists or len(lists) != 1 else next(iter(lists))
        if key not in lists:
            raise ValueError(f"{path}: no list {key!r} (it has {sorted(lists)})")
        return lists[key]
    words = []
    for i, line in enumerate(text.splitlines(), 1):
        w = line.split("#", 1)[0].strip()
        if w:
            if any(c in w for c in "{}\t"):
                raise ValueError(f"{path}:{i}: invalid word {w!r}")
            words.append(w)
    if not words:
        raise ValueError(f"{path}: no words")
    return words


def concept_prompts(words: Sequence[str], template: str = PROMPT) -> list[list[dict[str, str]]]:
    """One user turn per word: the template filled with the (lower-cased) word.

    Args:
        words: the concept words.
        template: the prompt, with a `{word}` slot.

    Returns:
        One single-message conversation per word.

    Raises:
        ValueError: `template` has no `{word}` slot.
    """
    if "{word}" not in template:
        raise ValueError(f"template must contain '{{word}}', got {template!r}")
    return [[{"role": "user", "content": template.format(word=w.lower())}] for w in words]


def word_activations(model, words: Sequence[str], *, layers: int | Sequence[int] | None = None,
                     positions: str = "last_prompt", template: str = PROMPT, max_new_tokens: int = 32,
                     batch_size: int = 8, progress: bool = False) -> Float[Tensor, "word layer d_model"]:
    """Residual-stream activations after each block in `layers` for "Tell me about {word}".

    Args:
        model: a `LoadedModel`.
        words: the words.
        layers: decoder blocks (a layer spec; default all).
        positions: "last_prompt" (the last prompt token) or "response_mean" (mean over the model's
            own greedy answer).
        template: the prompt, with a `{word}` slot.
        max_new_tokens: length of the greedy answer (only for "response_mean").
        batch_size: prompts per forward pass.
        progress: show progress bars.

    Returns:
        `[word, layer, d_model]` activations, one row per word in order.

    Raises:
        ValueError: `positions` is not one of `POSITIONS`.
    """
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    layer_ids = resolve_layers(layers, n_layers=model.n_layers)
    convs = concept_prompts(words, template)
    if positions == "response_mean":
        rows = sample(model, convs, n=1, max_new_tokens=max_new_tokens, temperature=0, seed=0,
                      batch_size=batch_size, progress=progress)
        convs = [c + [{"role": "assistant", "content": r["response"] or "."}] for c, r in zip(convs, rows)]
    acts = cache(model, convs, layers=layer_ids, positions=positions,  # type: ignore[call-overload]  # positions checked above
                 batch_size=batch_size, progress=progress)
    assert isinstance(acts, Tensor)  # no out=: a tensor
    return acts


def concept_vectors(model, words: Sequence[str], baseline: Sequence[str] | None = None, *,
                    layers: int | Sequence[int] | None = None, positions: str = "last_prompt",
                    template: str = PROMPT, max_new_tokens: int = 32, batch_size: int = 8,
                    progress: bool = False) -> dict[str, Direction]:
    """Concept vector of each word (see the module docstring) as a per-layer `Direction`.

    Args:
        model: a `LoadedModel`.
        words: the concepts.
        baseline: words whose mean activation is subtracted (default: the shipped `baseline` list);
            a concept word that is also a baseline word is left out of its own baseline mean.
        layers: decoder blocks (default all).
        positions: "last_prompt" (the anchor's) or "response_mean".
        template: the prompt, with a `{word}` slot.
        max_new_tokens: greedy answer length for "response_mean".
        batch_size: prompts per forward pass.
        progress: show progress bars.

    Returns:
        {word: Direction} with `norms` = the raw difference norms and provenance in `meta`.

    Raises:
        ValueError: no word, or fewer than two baseline words.
    """
    words = list(dict.fromkeys(words))
    base = list(dict.fromkeys(baseline if baseline is not None else load_words("baseline")))
    if not words or len(base) < 2:
        raise ValueError(f"need at least one word and two baseline words (got {len(words)} and {len(base)})")
    layer_ids = resolve_layers(layers, n_layers=model.n_layers)
    kw: dict[str, Any] = dict(layers=layer_ids, positions=positions, template=template,
                              max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    a_words = word_activations(model, words, **kw).float()
    a_base = word_activations(model, base, **kw).float()
    total = a_base.sum(0)
    low = [b.lower() for b in base]
    out = {}
    for i, w in enumerate(words):
        if w.lower() in low:
            j = low.index(w.lower())
            mean = (total - a_base[j]) / (len(base) - 1)
        else:
            mean = total / len(base)
        out[w] = Direction.from_raw(a_words[i] - mean, layer_ids, method="concept_vector", word=w,
                                    model=getattr(model, "name", None), adapter=getattr(model, "meta", {}).get("adapter"),
                                    template=template, positions=positions, n_baseline=len(base),
                                    baseline=base if len(base) <= 200 else f"{len(base)} words")
    return out


def concept_vector(model, word: str, baseline: Sequence[str] | None = None, **kwargs) -> Direction:
    """`concept_vectors` for one word.

    Args:
        model: a `LoadedModel`.
        word: the concept.
        baseline: baseline words (default: the shipped `baseline` list).
        **kwargs: the keyword arguments of `concept_vectors` (layers, positions, template, ...).

    Returns:
        The word's `Direction`.
    """
    return concept_vectors(model, [word], baseline, **kwargs)[word]
