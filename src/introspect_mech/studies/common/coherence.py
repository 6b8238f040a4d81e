"""Coherence references shared by two studies (the steering proxy and introspection): neutral user prompts and
the unsteered base model's own greedy answers to them, the references of a coherence NLL under an intervention.
"""

from __future__ import annotations

from typing import Sequence

from ...evals.sampling import sample
from ...models import LoadedModel

NEUTRAL_PROMPTS = [
    "Explain how photosynthesis works in a few sentences.",
    "Give me a simple recipe for pancakes.",
    "What are some tips for learning a new language?",
    "Describe the water cycle.",
    "How do I change a flat tyre on a bicycle?",
    "What is the difference between weather and climate?",
    "Suggest three ways to stay focused while studying.",
    "Why is the sky blue?",
    "How does a refrigerator keep food cold?",
    "What should I pack for a weekend hiking trip?",
    "Summarise the rules of chess in a short paragraph.",
    "How can I make my houseplants healthier?",
]


def reference_answers(model: LoadedModel, prompts: Sequence[str] = NEUTRAL_PROMPTS, *, max_new_tokens: int = 48,
                      batch_size: int = 16) -> list[list[dict[str, str]]]:
    """The model's own greedy answers (call it on the unsteered base model): coherence references.

    Args:
        model: a `LoadedModel` (unsteered).
        prompts: the neutral user prompts.
        max_new_tokens: tokens per answer.
        batch_size: prompts per generate call.

    Returns:
        One conversation (user prompt + greedy answer) per prompt with a non-empty answer.
    """
    rows = sample(model, [[{"role": "user", "content": p}] for p in prompts], n=1, max_new_tokens=max_new_tokens,
                  temperature=0, seed=0, batch_size=batch_size, progress=False)
    return [r["messages"] + [{"role": "assistant", "content": r["response"]}] for r in rows if r["response"].strip()]
