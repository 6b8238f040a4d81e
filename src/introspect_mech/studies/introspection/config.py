"""`IntrospectionConfig` (every option of the study) and its `PRESETS`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from .prompts import VARIANTS


# ---- the study -------------------------------------------------------------------------------------
@dataclass
class IntrospectionConfig:
    """Everything that decides a run (saved in the manifest).

    One field per option; the trailing comment of each is its `--help` text (`introspect-mech study
    introspection --help`).
    """

    model: str | None = None  # model name/path/hub id (None: the embedded SmolLM2-135M-Instruct)
    words: tuple[str, ...] | str = "concrete"  # a shipped list name (concrete, abstract), a word file, or the words
    n_words: int | None = 8  # the first N concept words (None: all)
    baseline: str = "baseline"  # baseline word list of the concept vectors (name or file)
    concept_positions: str = "last_prompt"  # where concept vectors read the activations (last_prompt, response_mean)
    variants: tuple[str, ...] = VARIANTS  # detection prompt variants (anchor, informative)
    trials: tuple[int, ...] = (1,)  # trial numbers of injected trials (prompt variation)
    control_trials: tuple[int, ...] = tuple(range(1, 11))  # trial numbers of no-injection trials (cheap: one forward each)
    layer_fractions: tuple[float, ...] = (0.5, 0.67, 0.83)  # injection layers, as relative depths
    strengths: tuple[float, ...] = (2.0, 4.0, 8.0)  # injection strengths (times the raw concept vector)
    inject_from: Literal["prompt_end", "trial"] = "trial"  # inject from the "Trial {n}" text on (the anchor), or from the last prompt token on
    random_seed: int = 0  # seed of the random-vector controls
    # sampled answers at the headline cell
    headline_fraction: float = 0.67  # layer (relative depth) of the sampled answers and stage B
    headline_strength: float = 4.0  # strength of the sampled answers and stage B
    n_samples: int = 2  # sampled answers per word and variant (0: none)
    sample_words: int = 4  # concept words with sampled answers
    max_new_tokens: int = 40  # tokens per sampled answer
    # coherence (reference answers to neutral prompts; injected with the first `coherence_words` concepts)
    coherence_prompts: int = 4  # neutral prompts of the coherence references
    coherence_words: int = 2  # concepts injected in the coherence check
    # prefill / intention (at the headline layer; `intention_strengths` None = the headline strength)
    n_sentences: int = 10  # sentences of the prefill / intention test
    intention_strengths: tuple[float, ...] | None = None  # strengths of the intention test (None: the headline strength)
    # self-report tracking
    persona_trait: str = "evil"  # persona trait of stage C's direction
    persona_questions: int = 6  # questions of the persona-direction extraction
    persona_instructions: int = 2  # instruction pairs of the persona-direction extraction
    persona_tokens: int = 32  # tokens per answer of the persona-direction extraction
    persona_filter: str | None = "instruction_likelihood"  # filter of the persona answers (None: unfiltered)
    steer_fraction: float = 0.5  # steering layer of stages C and D (relative depth)
    read_fraction: float = 0.67  # layer (relative depth) the projection is read at
    alphas: tuple[float, ...] = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)  # steering strengths of stages C and D
    n_em_items: int | None = 16  # EM proxy items, balanced over themes (None: all)
    finetune_dataset: str = "bad_medical_advice"  # data of stage C's finetune checkpoints
    finetune_examples: int = 32  # training records of the finetune checkpoints
    finetune_steps: int = 8  # optimizer steps of the finetune (0 skips the finetune checkpoints)
    finetune_every: int = 2  # a checkpoint every N steps
    finetune_lr: float = 4e-4  # learning rate of the finetune
    finetune_batch: int = 4  # batch size of the finetune
    finetune_warmup: int = 0  # warmup steps of the finetune
    # stage D (risk self-report): test lotteries for P(risky), train lotteries for the risk direction
    n_lotteries: int | None = 24  # test lotteries of P(risky) (None: all)
    risk_direction_items: int = 48  # training lotteries of the risk direction
    stages: str = "ABCD"  # letters of A (detection), B (prefill/intention), C (self-report: alignment), D (self-report: risk)
    seed: int = 0  # seed of the study (sampling, finetunes, bootstrap)
    batch_size: int = 8  # prompts per forward batch
    allow_unvalidated_judge: bool = False  # report judged detection / identification rates from a judge without a passing validation on the shared GPT-4o set (labelled "unvalidated judge")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (tuples as lists), as saved in the manifest."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


PRESETS: dict[str, IntrospectionConfig] = {
    # embedded model on a shared 2-core CPU (about 10-15 min)
    "cpu": IntrospectionConfig(),
    # Qwen2.5-Coder-0.5B-Instruct on an idle 2-core CPU (about 1 h; the runbook also runs it with --model
    # qwen2.5-coder-1.5b-instruct): 8 concepts, 10 control trials, 3 depths x 3 strengths, stages A (detection with
    # its false-positive controls) and B; the self-report stages C and D run in the persona-vectors / TMAY runs.
    "qwen-cpu": IntrospectionConfig(model="qwen2.5-coder-0.5b-instruct", n_words=8, stages="AB", n_samples=2,
                                    sample_words=4, max_new_tokens=40, batch_size=8),
    # Qwen on one GPU: the anchors' depth (~2/3) and strengths (1-8; 2-4 were best for the anchor), the
    # full word lists, several trial numbers, more samples, all finetune records
    "paper": IntrospectionConfig(n_words=None, trials=(1, 2, 3, 4, 5), control_trials=tuple(range(1, 51)),
                                 layer_fractions=(0.5, 0.6, 0.67, 0.75, 0.85),
                                 strengths=(1.0, 2.0, 4.0, 8.0), headline_fraction=0.67, headline_strength=2.0,
                                 n_samples=10, sample_words=20, max_new_tokens=100, coherence_prompts=12,
                                 coherence_words=8, n_sentences=12, intention_strengths=(1.0, 2.0, 4.0, 8.0),
                                 persona_questions=20, persona_instructions=5, persona_tokens=200,
                                 alphas=(-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0), n_em_items=None,
                                 finetune_examples=2000, finetune_steps=120, finetune_every=20, finetune_lr=1e-5,
                                 finetune_batch=16, finetune_warmup=5, n_lotteries=None, risk_direction_items=200,
                                 batch_size=16),
}
