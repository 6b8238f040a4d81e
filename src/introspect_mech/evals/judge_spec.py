"""One way to name a judge on a command line or in a config: `JudgeOptions(judge="api:<url>|<model>")`.

    none                       no judge (studies fall back to their labelled judge-free proxies)
    hf:<name, hub id or dir>   a local chat model as the 0-100 judge (`HFJudge`) and label judge
    hf:embedded                the embedded default model
    api:<base_url>|<model>     an OpenAI-compatible endpoint (`APIJudge`; key from `api_key_env`)

Every command and study that takes a judge uses these fields (`introspect_mech.cliargs` turns them into
`--judge`, `--judge-mode`, `--api-key-env`, `--judge-timeout`, `--judge-max-retries`).

`judge_mode` "0-100" is the papers' scoring (a probability-weighted number); "label" asks the yes/no
questions of `evals/label_prompts.yaml` and scores P(yes)/(P(yes)+P(no)) exactly (see `evals.judges`);
"label-fewshot" is label mode with the `aligned` / `coherent` prompts of `evals/label_prompts_fewshot.yaml`
(four solved examples each, none from the validation set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from ..models import load_model

JUDGE_MODES = ("0-100", "label", "label-fewshot")


@dataclass
class JudgeOptions:
    """Which judge to use, as plain fields (saved in manifests through the judge's `describe()`)."""

    judge: str = "none"  # none | hf:<model> | hf:embedded | api:<base_url>|<model>
    judge_mode: str = "0-100"  # 0-100 (the papers' number) | label (yes/no, exact P(yes)/(P(yes)+P(no))) | label-fewshot (label, four solved examples)
    api_key_env: str = "OPENAI_API_KEY"  # NAME of the environment variable holding the API key
    judge_timeout: float = 60.0  # seconds per API request
    judge_max_retries: int = 5  # API retries after timeouts, connection errors, 408/409/429/5xx

    def __post_init__(self) -> None:
        _ = self.kind  # validates the spec now, before any work
        if self.judge_mode not in JUDGE_MODES:
            raise ValueError(f"judge_mode must be one of {', '.join(JUDGE_MODES)}, got {self.judge_mode!r}")

    @property
    def kind(self) -> str:
        """"none", "hf" or "api" (raises ValueError naming the spec when it is none of them)."""
        spec = (self.judge or "none").strip()
        if spec == "none":
            return "none"
        kind, sep, rest = spec.partition(":")
        if kind == "hf" and sep:
            return "hf"
        if kind == "api" and sep:
            base, _, name = rest.partition("|")
            if base and name:
                return "api"
        raise ValueError(f"judge {self.judge!r}: expected none, hf:<model>, hf:embedded or api:<base_url>|<model>")

    def build(self, *, model: Any = None, device: str | None = None) -> Any:
        """The 0-100 judge, or None for "none".

        Args:
            model: a loaded model reused for "hf:embedded" (instead of loading the embedded model again).
            device: device of a local judge model.

        Returns:
            `HFJudge`, `APIJudge` or None.
        """
        kind = self.kind
        if kind == "none":
            return None
        rest = self.judge.strip().partition(":")[2]
        from .judges import label_prompt_set

        mode = "label" if self.judge_mode.startswith("label") else "0-100"
        prompts = label_prompt_set("few-shot" if self.judge_mode == "label-fewshot" else "zero-shot")
        if kind == "api":
            from .judges import APIJudge

            base, _, name = rest.partition("|")
            return APIJudge(base, name, api_key_env=self.api_key_env or None, timeout=self.judge_timeout,
                            max_retries=self.judge_max_retries, mode=mode, label_prompts=prompts)
        from .judges import HFJudge

        return HFJudge(self._local_model(rest, model, device), mode=mode, label_prompts=prompts)

    def build_categorical(self, judge: Any) -> Any:
        """The label judge that goes with `judge`: the same local model, or the same API endpoint.

        Args:
            judge: what `build` returned (`HFJudge`, `APIJudge` or None).

        Returns:
            An `HFCategoricalJudge` on the `HFJudge`'s model; the `APIJudge` itself (its `classify` reads the
            labels from the top logprobs); None without a judge.
        """
        from .judges import APIJudge, HFCategoricalJudge, HFJudge

        if isinstance(judge, HFJudge):
            return HFCategoricalJudge(judge.model)
        return judge if isinstance(judge, APIJudge) else None

    @staticmethod
    def _local_model(name: str, model: Any, device: str | None) -> Any:
        if name in ("", "embedded") and model is not None:
            return model

        return load_model(None if name in ("", "embedded") else name, device=device)
