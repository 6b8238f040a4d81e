"""Paper protocols, one package per study (emergent misalignment, model organisms, Tell Me About Yourself,
Looking Inward, persona vectors, CAFT, persona features, organisms, introspection, the steering proxy) and the
main job, on one runner (`studies.runner`). What two studies share lives in `studies.common`. They compose the
library (models, data, finetune, evals, activations, probes, steering, sae, diffing, viz); nothing in the
library imports this package, and no study imports another. `experiments/*.py` and the CLI are thin callers.
See docs/skeleton.md.
"""

from __future__ import annotations

from importlib import import_module

PANEL_MODULES = ("introspection", "caft", "organisms")  # the studies that declare dashboard panels of their own


def register_panels() -> None:
    """Import every study's `panels` module, so a dashboard of any run shows the studies' own panels
    (`viz.dashboard.register_panel`); `introspect-mech dashboard` calls this."""
    for name in PANEL_MODULES:
        import_module(f"{__name__}.{name}.panels")
