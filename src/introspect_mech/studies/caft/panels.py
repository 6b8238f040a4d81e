"""The CAFT component-picking panel: each principal component of base-vs-finetune activation
differences with its explained variance, logit-lens tokens and top / bottom activating examples,
so a person can say what it means and pick the ones to ablate (`studies.caft`).

Rows of `caft_components.jsonl`: layer, component, explained?, logit_top?, logit_bottom?,
top_examples?, bottom_examples? (examples: {"tokens", "acts", "value"?}), picked? (bool).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from ...viz.dashboard import Panel, register_panel
from ...viz.mech import token_highlight_html
from ...viz.rows import PanelRow

Row = dict[str, Any]


def _tokens(toks: Sequence[str] | None) -> str:
    return " ".join(f"<code>{html.escape(repr(t))}</code>" for t in (toks or [])) or "–"


def caft_components_html(rows: Sequence[Row], max_examples: int = 3) -> str:
    """HTML cards, one per (layer, component), ordered by layer then component.

    Args:
        rows: `caft_components.jsonl` rows (see the module docstring).
        max_examples: top and bottom examples shown per component, each.

    Returns:
        The HTML fragment.
    """
    cards = []
    for r in sorted(rows, key=lambda r: (int(r["layer"]), int(r["component"]))):
        head = f"layer {int(r['layer'])} · component {int(r['component'])}"
        if r.get("explained") is not None:
            head += f" · explained variance {float(r['explained']):.3f}"
        if r.get("picked"):
            head += " · <b>picked for ablation</b>"
        parts = [f"<h3 style='font-size:14px;margin:6px 0'>{head}</h3>",
                 f"<div class='about'>logit lens +: {_tokens(r.get('logit_top'))}</div>",
                 f"<div class='about'>logit lens −: {_tokens(r.get('logit_bottom'))}</div>"]
        for key, label in (("top_examples", "highest"), ("bottom_examples", "lowest")):
            for j, ex in enumerate((r.get(key) or [])[:max_examples]):
                acts = ex.get("acts", ex.get("activations"))
                if ex.get("tokens") is None or acts is None:
                    continue
                val = f" ({float(ex['value']):+.3g})" if ex.get("value") is not None else ""
                parts.append(token_highlight_html(ex["tokens"], acts, title=f"{label} projection #{j + 1}{val}"))
        cards.append(f"<div class='caft-card' style='border-top:1px solid #e2e5ea;padding:4px 0'>{''.join(parts)}</div>")
    return "".join(cards)


@dataclass
class CAFTComponentRow(PanelRow):
    """One principal component to pick for CAFT (`caft_components.jsonl`)."""

    PANEL: ClassVar[str] = "caft_components"
    layer: int
    component: int
    explained: float | None = None
    logit_top: list[str] | None = None
    logit_bottom: list[str] | None = None
    top_examples: list[Any] | None = None
    bottom_examples: list[Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


CAFT_COMPONENTS = register_panel(Panel(
    "caft_components", "CAFT: components to pick", "caft_components.jsonl", ("layer", "component"),
    "Principal components of finetuned-minus-base activation differences: logit-lens tokens and the "
    "examples projecting highest / lowest on each, for a person to pick the ones to ablate in CAFT.",
    render=lambda rows: [caft_components_html(rows)], row=CAFTComponentRow))
