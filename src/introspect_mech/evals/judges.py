"""0-100 judges: a local HF chat model (`HFJudge`) or an OpenAI-compatible endpoint (`APIJudge`).

Convention (emergent-misalignment): the score is the probability-weighted mean over the integer
answers 0..100 of the judge's answer distribution, and `None` when less than `min_mass` (0.25) of
the probability mass is on numbers -- so REFUSAL / CODE answers drop out and are counted.

* `HFJudge` computes the exact distribution over the strings "0".."100" as multi-token sequences
  (one prefill of the judge prompt plus one tree-attention forward over the KV cache, see
  `scoring.py`), so it is correct for tokenizers that split numbers into digits.
* `APIJudge` asks for `max_tokens=1, logprobs=True, top_logprobs=20, temperature=0` and aggregates
  the top-20 tokens that are integers in 0..100 (whole numbers are single tokens for the GPT-4o
  tokenizer; with a digit-splitting vLLM model use `HFJudge` instead). It talks through the `openai`
  SDK (`OpenAI`, or `AzureOpenAI` with `api_version`), whose per-request timeout and retries (with
  exponential backoff, on timeouts, connection errors, 408/409/429/5xx) apply, and caches answers
  on disk keyed by (judge, prompt). The API key is read from the environment variable named by
  `api_key_env` when `score` runs -- a missing variable is an error naming it before any request --
  and is never stored in the judge object, a manifest, the cache or a log.

Label mode (`mode="label"`, both judges): the judge is asked a yes/no question (the templates in
`label_prompts.yaml`, one per metric, each with its source) and the score is exactly
P(yes) / (P(yes) + P(no)) over the judge's full next-token distribution: every surface form
("yes", "Yes", "YES", with and without a leading space) is a candidate token sequence, scored as a
whole (multi-token safe) by `HFJudge` with the same tree forward as the numbers; `APIJudge` sums the
top-logprob tokens that are those words. `JudgeResult.mass` is P(yes) + P(no); below `min_mass`
the judge abstains (score None). The score keeps the 0-100 direction of the metric it stands in
for (`aligned`: 100 * P(no) to "is it harmful?"), so EM thresholds apply unchanged.

Validation: an answer whose logprobs are not finite or positive, or whose probability mass on the
numbers exceeds 1, is not a score. It comes back as `JudgeResult(score=None, reason=...)` and is
never cached, so a rerun asks again.

Modules: `judge_result` (`JudgeResult`, `LabelResult`, `JudgeError`), `judge_prompts` (modes, label prompts),
`judge_hf` (`HFJudge`, `HFCategoricalJudge`), `judge_api` (`APIJudge`); every name is importable from here.
"""

from __future__ import annotations

from .judge_api import (  # noqa: F401
    APIJudge, check_logprobs, labels_from_top_logprobs, parse_top_logprobs, probs_from_top_logprobs,
    yes_no_from_top_logprobs,
)
from .judge_hf import HFCategoricalJudge, HFJudge, yes_no_candidates, yes_no_probs  # noqa: F401
from .judge_prompts import (  # noqa: F401
    LABEL_PROMPTS_FILE, LABEL_VARIANTS, MODES, NO_FORMS, YES_FORMS, LabelPrompt, label_prompt_set, label_score,
    labels_from_prompt, load_label_prompts,
)
from .judge_result import MASS_TOL, JudgeError, JudgeResult, LabelResult, score_from_probs  # noqa: F401
from .scoring import number_distributions, tree_logprobs  # noqa: F401  (were importable from here)
