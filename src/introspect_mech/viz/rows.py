"""Typed rows of the dashboard panels: one dataclass per panel, declared beside `dashboard.PANELS`.

A study writes results for a panel by handing one of these to its runner context
(`ctx.write(SummaryRow("final loss", 0.42))`); the runner appends `row.as_row()` to the panel's file
(`dashboard.panel(row.PANEL).file`) through the run directory's writer. The fields each class declares without a
default are exactly the panel's `required` fields (a test checks this); the optional ones are the `?`
fields of the table in `viz.dashboard`; anything further a panel shows goes in `extra`. A study's own panel
declares its row class beside it, in the study's package (`Panel.row`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .dashboard import PANELS, panel

__all__ = ["PanelRow", "SummaryRow", "TrainLogRow", "EMRateRow", "SteeringEffectRow", "SteeringSweepRow",
           "ProbeLayerRow", "CosineRow", "SAEDiffRow", "TokenActivationRow", "SampleRow", "SelfAwarenessRow",
           "SelfPredictionRow", "TypologyRow", "ROW_TYPES"]


@dataclass
class PanelRow:
    """Base of the typed rows: `PANEL` names the panel (`viz.dashboard.Panel.key`)."""

    PANEL: ClassVar[str] = ""

    def as_row(self) -> dict[str, Any]:
        """The JSON object written to the panel's file: the fields (None optionals dropped) and `extra`.

        Returns:
            The row dict.
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if v is None and f.default is None:
                continue
            out[f.name] = v
        extra = getattr(self, "extra", None) or {}
        clash = sorted(set(extra) & set(out))
        if clash:
            raise ValueError(f"{type(self).__name__}: extra field {clash[0]!r} is a declared field")
        return {**out, **extra}

    @classmethod
    def file(cls) -> str:
        """The panel's JSONL file name."""
        return panel(cls.PANEL).file


@dataclass
class SummaryRow(PanelRow):
    """A headline number (`summary.jsonl`)."""

    PANEL: ClassVar[str] = "summary"
    name: str
    value: Any
    ci_lo: float | None = None
    ci_hi: float | None = None
    n: int | None = None
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainLogRow(PanelRow):
    """One optimizer step (`train_log.jsonl`, written by `finetune.train`)."""

    PANEL: ClassVar[str] = "training"
    step: int
    loss: float
    lr: float | None = None
    tokens_per_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EMRateRow(PanelRow):
    """The EM metric of one model on one question (`em_rates.jsonl`)."""

    PANEL: ClassVar[str] = "em_rates"
    model: str
    question: str
    rate: float | None
    ci_lo: float | None = None
    ci_hi: float | None = None
    n: int | None = None
    metric: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SteeringEffectRow(PanelRow):
    """One intervention's effect (`steering_effects.jsonl`)."""

    PANEL: ClassVar[str] = "steering_effects"
    model: str
    intervention: str
    metric: float | None
    ci_lo: float | None = None
    ci_hi: float | None = None
    n: int | None = None
    metric_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SteeringSweepRow(PanelRow):
    """One point of a steering sweep (`steering_sweep.jsonl`)."""

    PANEL: ClassVar[str] = "steering_sweep"
    direction: str
    layer: int
    alpha: float
    metric: float | None
    coherence: float | None = None
    seed: int | None = None
    metric_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProbeLayerRow(PanelRow):
    """A probe's accuracy at one layer (`probe_layers.jsonl`)."""

    PANEL: ClassVar[str] = "probes"
    probe: str
    layer: int
    accuracy: float
    auroc: float | None = None
    accuracy_std: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class CosineRow(PanelRow):
    """A cosine heat map (`cosines.jsonl`)."""

    PANEL: ClassVar[str] = "cosines"
    name: str
    x_labels: list[str]
    matrix: list[list[float]]
    y_labels: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SAEDiffRow(PanelRow):
    """One SAE latent of a model diff (`sae_diff.jsonl`)."""

    PANEL: ClassVar[str] = "sae"
    latent: int
    delta: float
    base_mean: float | None = None
    finetuned_mean: float | None = None
    cos_direction: float | None = None
    steer_effect: float | None = None
    url: str | None = None
    examples: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenActivationRow(PanelRow):
    """Per-token activations of one text (`token_activations.jsonl`)."""

    PANEL: ClassVar[str] = "tokens"
    title: str
    tokens: list[str]
    acts: list[float]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SampleRow(PanelRow):
    """One model answer (`samples.jsonl`)."""

    PANEL: ClassVar[str] = "samples"
    response: str
    model: str | None = None
    prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SelfAwarenessRow(PanelRow):
    """Self-report against behaviour for one model (`self_awareness.jsonl`)."""

    PANEL: ClassVar[str] = "self_awareness"
    model: str
    behaviour: float | None
    self_report: float | None
    question: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SelfPredictionRow(PanelRow):
    """Self-prediction accuracy of one task and kind (`self_prediction.jsonl`)."""

    PANEL: ClassVar[str] = "self_prediction"
    task: str
    kind: str
    accuracy: float | None
    ci_lo: float | None = None
    ci_hi: float | None = None
    mode_baseline: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TypologyRow(PanelRow):
    """One answer cluster (`typology.jsonl`, written from `evals.typology.typology(...).clusters`)."""

    PANEL: ClassVar[str] = "typology"
    cluster: int
    size: int
    shares: dict[str, dict[str, Any]]
    typical: list[dict[str, Any]] | None = None
    judge_scores: dict[str, dict[str, Any]] | None = None
    judge: str | None = None
    judge_validation: str | None = None
    k: int | None = None
    silhouette: float | None = None
    embedding: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_cluster(cls, cluster: dict[str, Any]) -> "TypologyRow":
        """The row of one `evals.typology.TypologyResult.clusters` entry (fields it does not declare go in `extra`).

        Args:
            cluster: the cluster dict.

        Returns:
            The row.
        """
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in cluster.items() if k in names},
                   extra={k: v for k, v in cluster.items() if k not in names})


ROW_TYPES: dict[str, type[PanelRow]] = {c.PANEL: c for c in (
    SummaryRow, TrainLogRow, EMRateRow, SteeringEffectRow, SteeringSweepRow, ProbeLayerRow, CosineRow, SAEDiffRow,
    TokenActivationRow, SampleRow, SelfAwarenessRow, SelfPredictionRow, TypologyRow)}
assert set(ROW_TYPES) == {p.key for p in PANELS}, "every dashboard panel has one typed row"
