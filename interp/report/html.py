"""Pieces of standalone, offline HTML pages: the circuitsvis bundle (inlined once per page; its
own ``local_src`` would inline ~1.3 MB per view), attention views as a ``<div>`` and a one-line
render call, tables with intervals, and the page skeleton with plotly.js inlined once."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

STYLE = ("body{font-family:sans-serif;margin:24px;max-width:1250px}"
         "table.t{border-collapse:collapse;margin:8px 0}table.t td,table.t th{border:1px solid "
         "#ccc;padding:3px 8px;text-align:right}table.t td:first-child{text-align:left}"
         ".verdict{background:#f4f4f8;padding:12px;border-left:4px solid #636efa}"
         ".note{color:#555;font-size:90%}.bad{color:#b00}.ok{color:#070}")


def esc(value) -> str:
    return html.escape(str(value))


def circuitsvis_bundle() -> str:
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    return path.read_text(encoding="utf-8").replace("</script>", "")


def attention_view(element_id: str, tokens: list[str], attention, labels: list[str]) -> str:
    from circuitsvis.utils.render import convert_props

    props = convert_props({"tokens": tokens, "attention": attention, "headLabels": labels})
    return (f'<div id="{element_id}" class="cv-view" style="margin:15px 0"></div>\n'
            f'<script>CircuitsVis.render("{element_id}", CircuitsVis.AttentionPatterns, '
            f'{props});</script>')


def views_html(views: dict, prefix: str = "cv") -> str:
    """One heading and one circuitsvis attention view per condition (needs the bundle loaded)."""
    parts = []
    for i, (cond, view) in enumerate(views.items()):
        parts.append(f"<h3>{esc(cond)}</h3>")
        parts.append(attention_view(f"{prefix}-{i}", view["tokens"], view["attention"],
                                    view["heads"]))
    return "\n".join(parts)


def show_views(views: dict):
    """The attention views as one notebook output, the circuitsvis bundle inlined (offline)."""
    from uuid import uuid4

    from IPython.display import HTML

    return HTML(f"<script>{circuitsvis_bundle()}</script>" +
                views_html(views, prefix=f"cv-{uuid4().hex[:8]}"))


def num(value, digits: int = 3) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return esc(value)


def with_ci(d: dict | None, digits: int = 3) -> str:
    """``estimate [low, high]`` of an ``{"estimate", "ci95"}`` dict, or its reason."""
    if not d or d.get("estimate") is None:
        reason = (d or {}).get("reason")
        return f"<span class='note' title='{esc(reason)}'>undefined</span>" if reason \
            else "&ndash;"
    ci = d.get("ci95")
    tail = f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else ""
    return f"{d['estimate']:.{digits}f}{tail}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], table_id: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    ident = f" id='{table_id}'" if table_id else ""
    return f"<table class='t'{ident}><tr>{head}</tr>{body}</table>"


def page(title: str, body: Sequence[str], figures: Sequence[tuple[str, object]] = (),
         scripts: Sequence[str] = ()) -> str:
    """A standalone page: ``body`` parts, then each (heading, plotly figure) with plotly.js
    inlined once, then ``scripts``."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{esc(title)}</title>",
             f"<style>{STYLE}</style>", "</head><body>", *body]
    for i, (heading, fig) in enumerate(figures):
        if heading:
            parts.append(f"<h2>{esc(heading)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0),
                                 div_id=getattr(fig, "_interp_id", None)))
    parts.extend(scripts)
    parts.append("</body></html>")
    return "\n".join(parts)
