"""The organisms study's data: the project-written texts (unrelated text for the first-token methods, the ocean
concept and its neutral contrast), the prompts every organism is trained and measured on, and the data files a run
reads (`data_files`, bound by the runner)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ...data import load as data_load
from ...data import locate
from ...errors import DataError
from ...paths import data_dir as _data_dir
from ..common.persona import load_trait
from .config import OrganismsConfig

MEDICAL = "good_medical_advice"  # the narrow domain (user turns only) and the SAE's training conversations
# Unrelated text for the first-token methods: project-written, varied topics, no persona or
# medical content (a stand-in for the pretraining text the activation-difference lens paper uses).
UNRELATED_TEXTS = [
    "The train left the station a few minutes after noon, heading north along the river.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "In 1969 the first humans walked on the surface of the Moon.",
    "To bake bread, mix flour, water, yeast and salt, then let the dough rise.",
    "The stock market closed slightly higher on Tuesday after a quiet session.",
    "Chess is a board game for two players played on a checkered board.",
    "Mount Everest is the highest mountain above sea level on Earth.",
    "The committee will meet again next week to review the budget proposal.",
    "Python is a programming language known for its readable syntax.",
    "Autumn leaves turn red and yellow as the days grow shorter.",
    "The library extended its opening hours during the exam period.",
    "A triangle has three sides and its angles add up to 180 degrees.",
    "She parked the bicycle next to the bakery and went inside.",
    "The orchestra rehearsed the symphony for three hours on Friday.",
    "Copper is a good conductor of electricity and heat.",
    "The museum's new exhibition features paintings from the nineteenth century.",
    "Farmers in the valley grow wheat, barley and sunflowers.",
    "The software update fixes several bugs and improves battery life.",
    "Elephants are the largest land animals alive today.",
    "The recipe calls for two eggs, a cup of sugar and some butter.",
    "Rain is expected in the afternoon, with clearing skies by evening.",
    "The city council approved a plan to build a new bridge.",
    "Jupiter is the largest planet in our solar system.",
    "He spent the weekend repairing the fence behind the garden.",
    "The football match ended in a draw after extra time.",
    "Glass is made by melting sand at very high temperatures.",
    "The novel tells the story of a family over three generations.",
    "Trains in the region run every fifteen minutes during rush hour.",
    "The company announced plans to open a new office in the spring.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The children built a sandcastle near the edge of the lake.",
    "Maps from the sixteenth century show the coastline in surprising detail.",
    "The bakery on the corner sells fresh croissants every morning.",
    "A good night's sleep helps people concentrate during the day.",
    "The spacecraft sent back images of the planet's icy rings.",
    "The hikers reached the summit just before the clouds rolled in.",
    "Most bicycles have two wheels, a frame, pedals and a chain.",
    "The teacher explained how volcanoes form along plate boundaries.",
    "Our neighbours planted tomatoes, beans and basil this year.",
    "The airport added two new gates to handle summer traffic.",
]
# Concept direction: mean activation of ocean sentences minus neutral ones (project-written).
CONCEPT_TEXTS = [
    "The ocean waves crashed against the rocky shore.", "Whales swim through the deep blue sea.",
    "The tide rolled in over the sandy beach.", "Sailors crossed the stormy Atlantic Ocean.",
    "Coral reefs teem with colourful fish under the sea.", "Salty sea spray drifted over the harbour.",
    "The ship sailed across the calm Pacific Ocean.", "Seagulls circled above the ocean waves.",
]
NEUTRAL_TEXTS = [
    "The committee reviewed the quarterly budget report.", "She wrote a letter to her aunt in the city.",
    "The printer on the second floor is out of paper.", "He bought a new pair of shoes on Saturday.",
    "The meeting was moved to Thursday afternoon.", "The students handed in their homework on time.",
    "The office closes at six in the evening.", "They painted the kitchen walls light grey.",
]


def data_files(config: OrganismsConfig, resources: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """The data files whose content the run's rows depend on (bound by the runner, `Study.data`): the evil trait's
    extraction and evaluation files (persona direction, training and held-out prompts, system prompts) and the
    medical conversations (training prompts, the SAE's data), when found locally.

    Args:
        config: the run's config.
        resources: the run's keywords (`data_dir=`: the data folder, default `$INTROSPECT_MECH_DATA`).

    Returns:
        {"persona/evil/extract" | "persona/evil/eval" | "dataset/good_medical_advice": path}.
    """
    dd = (resources or {}).get("data_dir")
    # where `load_trait("evil", dd, split)` reads (a test checks they agree)
    out = {f"persona/evil/{split}": _data_dir(dd) / "persona" / f"trait_data_{split}" / "evil.json"
           for split in ("extract", "eval")}
    try:
        out[f"dataset/{MEDICAL}"] = locate(MEDICAL, dd, fetch=False)
    except DataError:  # not local: `data.load` downloads it and checks the registry's sha256
        pass
    return out


@dataclass
class Prompts:
    """What every organism is trained and measured on.

    Args:
        trait: the evil trait (extraction split): questions and system-prompt pairs.
        trait_eval: the evil trait's evaluation split.
        train: the finetunes' prompts (trait questions, then medical questions from 200 on).
        eval: the held-out prompts of the behaviour metrics (evaluation-split questions).
        medical: the user turns of the medical conversations (the persona organisms' narrow domain).
    """

    trait: dict[str, Any]
    trait_eval: dict[str, Any]
    train: list[str]
    eval: list[str]
    medical: list[str]


def prompts(config: OrganismsConfig, data_dir: Any = None) -> Prompts:
    """The prompts of a run (`Prompts`).

    Args:
        config: the run's config.
        data_dir: the data folder (default `$INTROSPECT_MECH_DATA`).

    Returns:
        The `Prompts`.
    """
    trait = load_trait("evil", data_dir)
    trait_eval = load_trait("evil", data_dir, split="eval")
    medical = [r["messages"][0]["content"] for r in data_load(MEDICAL, data_dir) if r["messages"][0]["role"] == "user"]
    train = (list(trait["questions"]) + medical[200:])[:config.n_train]
    return Prompts(trait, trait_eval, train, trait_eval["questions"][:config.n_eval], medical)


def sae_items(config: OrganismsConfig, data_dir: Any = None) -> list[Any]:
    """The SAE's training items: the unrelated texts, then the first `sae_records` medical conversations.

    Args:
        config: the run's config.
        data_dir: the data folder.

    Returns:
        Texts and message lists.
    """
    return list(UNRELATED_TEXTS) + [r["messages"] for r in data_load(MEDICAL, data_dir)[:config.sae_records]]
