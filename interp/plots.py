"""Plotly figures and self-contained HTML pages (plotly.js inlined once per page: works offline)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import torch

from interp.files import write_text


def heatmap(values: torch.Tensor, title: str = "", x_title: str = "head", y_title: str = "layer",
            x_labels: Sequence | None = None, y_labels: Sequence | None = None,
            hover: str = "value", zmid: float | None = 0.0):
    """A layer-by-component heatmap (diverging colours centred on ``zmid``)."""
    import plotly.graph_objects as go

    z = values.detach().float().cpu().numpy()
    x = list(x_labels) if x_labels is not None else list(range(z.shape[1]))
    y = list(y_labels) if y_labels is not None else list(range(z.shape[0]))
    fig = go.Figure(go.Heatmap(
        z=z, x=[str(v) for v in x], y=[str(v) for v in y], colorscale="RdBu", zmid=zmid,
        reversescale=True, colorbar={"title": hover},
        hovertemplate=f"{y_title} %{{y}}<br>{x_title} %{{x}}<br>{hover} %{{z:.4f}}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title,
                      yaxis={"autorange": "reversed", "type": "category"},
                      xaxis={"type": "category"}, height=max(360, 18 * len(y) + 140),
                      margin={"l": 60, "r": 20, "t": 60, "b": 50})
    return fig


def write_page(path: str | Path, title: str, figures: Sequence, intro: str = "") -> Path:
    """One standalone HTML page holding ``figures`` (plotly.js inlined once)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             "</title><style>body{font-family:sans-serif;margin:24px;max-width:1200px}</style>"
             f"</head><body><h1>{html.escape(title)}</h1>{intro}"]
    for i, fig in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    parts.append("</body></html>")
    return write_text(path, "\n".join(parts))   # atomic: never a partial page under its name
