"""Standalone, offline HTML reports (plotly.js and the circuitsvis bundle inlined once per page).
Reports read results; they never run a model."""

from interp.report.explorer import explorer, explorer_html
from interp.report.html import attention_view, circuitsvis_bundle, show_views, views_html
from interp.report.shift import write_report

__all__ = ["attention_view", "circuitsvis_bundle", "explorer", "explorer_html", "show_views",
           "views_html", "write_report"]
