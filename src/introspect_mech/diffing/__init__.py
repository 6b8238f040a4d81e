"""Model diffing: read what changed between two models from their activations.

Every method takes two `LoadedModel`s run on the *same* tokens: a base and a finetuned model, or the
same object with and without its PEFT adapter (pass the adapter-carrying model as both `base` and
`tuned`; the base pass then runs under `disable_adapter()`). Each returns a `probes.Direction`
(per-layer unit vectors + norms + provenance), so every method can be compared with a known
direction (`recovery`), read through the unembedding (`logit_lens`), steered with
(`steer_readout`) and intervened with (`steering.add` / `steering.ablate`).

* `activation_difference` -- the activation-difference lens (Minder et al. 2025, "Narrow finetuning
  leaves clearly readable traces"): the mean of `tuned - base` residual activations on the first `k`
  tokens of unrelated text (no chat template);
* `difference_pca` -- the top right-singular vector of the per-token differences on the same tokens
  (uncentred: a constant shift is the top component; centring would remove it);
* `response_mean_difference` -- mean difference of the response-averaged activations on the same
  conversations (`activations.cache(..., positions="response_mean")`);
* `probe_difference` -- a logistic probe base-vs-tuned on the per-token activations (its normal);
* `sae_latent_difference` -- the top increased latent of `sae.model_diff` (its decoder vector);
* `compare` -- all of them on one pair of models, with cosines to a known direction and a
  norm-matched random baseline.

`response_logprobs` / `response_kl` measure the behavioural distance of two models (mean next-token
KL over the assistant tokens of given conversations), the effect measure of the organisms study.

Modules: `paired` (activations of both models on the same tokens), `methods` (the diffing methods),
`readout` (`logit_lens`, `steer_readout`), `distance` (`response_logprobs`, `response_kl`), `compare`
(`compare`, `recovery`); every name is importable from `introspect_mech.diffing`.
"""

from __future__ import annotations

from .compare import Comparison, compare, recovery  # noqa: F401
from .distance import Message, response_kl, response_logprobs  # noqa: F401
from .methods import (  # noqa: F401
    METHODS, activation_difference, difference_pca, probe_difference, response_mean_difference, sae_latent_difference,
)
from .paired import PairedActivations, paired_activations, text_activations  # noqa: F401
from .readout import logit_lens, steer_readout  # noqa: F401
