"""Plotly figures and the offline HTML dashboard (`export_dashboard`). See docs/dashboard.md."""

from .dashboard import (PANELS, DashboardError, Panel, export_dashboard, label_conflicts, load_panels, panels,
                        read_rows, register_panel, render_html)
from .figures import (em_rate_figure, loss_curves, self_prediction_figure, self_report_scatter,
                      steering_effect_figure)
from .style import control_style, style
from .mech import cosine_heatmap, probe_layer_figure, sae_diff_table, steering_sweep_figure, token_highlight_html

__all__ = [
    "PANELS", "Panel", "panels", "register_panel", "DashboardError", "export_dashboard", "label_conflicts", "load_panels", "read_rows", "render_html",
    "em_rate_figure", "loss_curves", "self_prediction_figure", "self_report_scatter", "steering_effect_figure",
    "cosine_heatmap", "probe_layer_figure", "sae_diff_table", "steering_sweep_figure", "token_highlight_html",
    "control_style", "style",
]
