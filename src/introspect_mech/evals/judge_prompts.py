"""Judge prompts and modes: the label-mode yes/no prompts (`label_prompts.yaml` and its variants), the
label score P(yes) / (P(yes) + P(no)), the quoted labels of a label-valued prompt, and what `HFJudge` and
`APIJudge` share (`_Modes`: the prompt each metric uses, the mode's description)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .judge_result import MASS_TOL, JudgeResult

MODES = ("0-100", "label")
YES_FORMS = ("yes", "Yes", "YES")
NO_FORMS = ("no", "No", "NO")
LABEL_PROMPTS_FILE = Path(__file__).with_name("label_prompts.yaml")
# label-prompt variants: each file's entries replace the zero-shot prompts of the same metric
LABEL_VARIANTS = {"zero-shot": None, "few-shot": Path(__file__).with_name("label_prompts_fewshot.yaml")}


@dataclass(frozen=True)
class LabelPrompt:
    """One label-mode judge prompt (an entry of `label_prompts.yaml`)."""

    name: str
    template: str
    yes_means: str  # "high": score = 100 P(yes)/(P(yes)+P(no)); "low": 100 P(no)/(...)
    source: str
    variant: str = ""  # "" (zero-shot) or the variant's name ("few-shot"; field `variant` of the YAML entry)


def load_label_prompts(path: str | os.PathLike | None = None) -> dict[str, LabelPrompt]:
    """The label-mode prompts {metric: LabelPrompt} (default: the package's `label_prompts.yaml`).

    Args:
        path: a YAML file of {metric: {template, yes_means, source}}.

    Returns:
        The prompts by metric name.

    Raises:
        ValueError: a field is missing or `yes_means` is not "high"/"low" (one line naming file and field).
    """
    import yaml

    p = Path(path) if path is not None else LABEL_PROMPTS_FILE
    raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: expected a mapping {{metric: {{template, yes_means, source}}}}")
    out = {}
    for name, e in raw.items():
        for f in ("template", "yes_means", "source"):
            if not isinstance(e, dict) or not isinstance(e.get(f), str) or not e[f].strip():
                raise ValueError(f"{p}: {name}.{f}: missing or not a non-empty string")
        if e["yes_means"] not in ("high", "low"):
            raise ValueError(f"{p}: {name}.yes_means: must be 'high' or 'low', got {e['yes_means']!r}")
        v = e.get("variant", "")
        if not isinstance(v, str):
            raise ValueError(f"{p}: {name}.variant: must be a string, got {v!r}")
        out[str(name)] = LabelPrompt(str(name), e["template"], e["yes_means"], e["source"].strip(), v)
    return out


def label_prompt_set(variant: str = "zero-shot") -> dict[str, LabelPrompt]:
    """The label prompts of a variant: the zero-shot `label_prompts.yaml`, its metrics replaced by the
    variant file's (`LABEL_VARIANTS`; "few-shot": `label_prompts_fewshot.yaml`, `aligned` and `coherent`).

    Args:
        variant: a key of `LABEL_VARIANTS`.

    Returns:
        {metric: LabelPrompt}.

    Raises:
        ValueError: an unknown variant.
    """
    if variant not in LABEL_VARIANTS:
        raise ValueError(f"label-prompt variant must be one of {sorted(LABEL_VARIANTS)}, got {variant!r}")
    out = load_label_prompts()
    path = LABEL_VARIANTS[variant]
    if path is not None:
        out.update(load_label_prompts(path))
    return out


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"judge mode must be one of {MODES}, got {mode!r}")
    return mode


def label_score(p_yes: float, p_no: float, *, yes_means: str = "high", min_mass: float = 0.25) -> JudgeResult:
    """A label-mode `JudgeResult` from P(yes) and P(no) as the judge's whole answer.

    Args:
        p_yes: probability of the yes answers (all surface forms).
        p_no: probability of the no answers.
        yes_means: "high" (score = 100 P(yes)/(P(yes)+P(no))) or "low" (100 P(no)/(...)).
        min_mass: abstain (score None) when P(yes) + P(no) is below this.

    Returns:
        The result; `p_yes` holds the normalised P(yes); invalid (reason set) when a probability is not
        finite / negative or the mass exceeds 1.
    """
    for name, v in (("yes", p_yes), ("no", p_no)):
        if not (math.isfinite(v) and v >= 0):
            return JudgeResult(None, float("nan"), f"invalid probability {v!r} for answer {name!r}")
    mass = p_yes + p_no
    if mass > 1 + MASS_TOL:
        return JudgeResult(None, mass, f"probability mass on yes/no is {mass:.4g} > 1")
    if mass <= 0 or mass < min_mass:
        return JudgeResult(None, mass)
    py = p_yes / mass
    return JudgeResult(100.0 * (py if yes_means == "high" else 1.0 - py), mass, p_yes=py)


def labels_from_prompt(template: str) -> list[str]:
    """The allowed answers of a label-valued judge prompt: its double-quoted words ("TRUE", "OpenAI").

    Args:
        template: the judge prompt text.

    Returns:
        The distinct quoted labels in order of first appearance.

    Raises:
        ValueError: the prompt quotes fewer than two labels.
    """
    labels = list(dict.fromkeys(re.findall(r'"([A-Za-z][A-Za-z0-9 _-]{0,30})"', template)))
    if len(labels) < 2:
        raise ValueError(f"judge prompt names fewer than two quoted labels: {template[:80]!r}")
    return labels


class _Modes:
    """What `HFJudge` and `APIJudge` share: the mode, the label prompts, the prompt each metric uses."""

    mode: str
    label_prompts: dict[str, LabelPrompt]
    min_mass: float
    system: str | None

    def template_for(self, metric: str, default: str | None = None) -> str:
        """The judge prompt this judge uses for `metric`.

        Args:
            metric: the judge prompt's name ("aligned", "coherent", ...).
            default: the question file's own (0-100) prompt.

        Returns:
            `default` in 0-100 mode; the label prompt of `metric` in label mode.

        Raises:
            KeyError: label mode and `label_prompts.yaml` has no prompt for `metric`, or 0-100 mode without a default.
        """
        if self.mode == "label":
            if metric not in self.label_prompts:
                raise KeyError(f"label-mode judge has no prompt for metric {metric!r} "
                               f"(label prompts: {', '.join(sorted(self.label_prompts))})")
            return self.label_prompts[metric].template
        if default is None:
            raise KeyError(f"0-100 judge needs the question file's prompt for metric {metric!r}")
        return default

    def _yes_means(self, metric: str | None) -> str:
        lp = self.label_prompts.get(metric) if metric is not None else None
        return lp.yes_means if lp is not None else "high"

    @property
    def mode_name(self) -> str:
        """The mode as printed: "0-100", "label", or "label-<variant>" (e.g. "label-few-shot")."""
        variants = sorted({v.variant for v in self.label_prompts.values() if v.variant}) if self.mode == "label" else []
        return "-".join([self.mode, *variants])

    def _mode_desc(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mode": self.mode}
        if self.mode == "label":
            d["label_prompts_sha256"] = hashlib.sha256(json.dumps(
                {k: [v.template, v.yes_means] for k, v in sorted(self.label_prompts.items())}).encode()).hexdigest()
            if self.mode_name != self.mode:  # a variant (zero-shot judges keep their description and fingerprint)
                d["label_variant"] = self.mode_name.removeprefix("label-")
        return d
