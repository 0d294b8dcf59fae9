"""The circuit-shift report: one standalone ``report.html`` that works offline.

plotly.js is inlined once and the circuitsvis bundle once (its own ``local_src`` would inline
~1.3 MB per view); every attention view then is a ``<div>`` and a one-line render call.
"""

from __future__ import annotations

import html
from pathlib import Path

import torch

from interp.circuits import ScoreMap

COLOURS = {"base-zs": "#636efa", "base-icl": "#ef553b", "ft-zs": "#00cc96"}


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
        parts.append(f"<h3>{html.escape(cond)}</h3>")
        parts.append(attention_view(f"{prefix}-{i}", view["tokens"], view["attention"],
                                    view["heads"]))
    return "\n".join(parts)


def show_views(views: dict):
    """The attention views as one notebook output, the circuitsvis bundle inlined (offline)."""
    from uuid import uuid4

    from IPython.display import HTML

    return HTML(f"<script>{circuitsvis_bundle()}</script>" +
                views_html(views, prefix=f"cv-{uuid4().hex[:8]}"))


def _figures(results: dict, maps: dict[str, ScoreMap]) -> list[tuple[str, object]]:
    import plotly.graph_objects as go

    from interp.plots import heatmap

    figs = []
    for cond, m in maps.items():
        figs.append((f"Head scores: {cond}", heatmap(
            m.heads, f"{cond}: normalised effect per head", "head", hover="effect")))
    for name, cond in (("ICL - zero-shot", "base-icl"), ("FT - zero-shot", "ft-zs")):
        figs.append((f"Difference: {name}", heatmap(
            maps[cond].heads - maps["base-zs"].heads, f"{name}: change of head scores", "head",
            hover="change")))
    mlp = go.Figure([go.Bar(name=c, y=m.mlp.tolist(), marker_color=COLOURS[c])
                     for c, m in maps.items()])
    mlp.update_layout(title="MLP scores per layer", xaxis_title="layer", barmode="group",
                      yaxis_title="normalised effect", height=380)
    figs.append(("MLP scores", mlp))
    shift = results["per_layer_shift"]
    bars = go.Figure([go.Bar(name="shift(ICL)", y=shift["icl"], marker_color=COLOURS["base-icl"]),
                      go.Bar(name="shift(FT)", y=shift["ft"], marker_color=COLOURS["ft-zs"])])
    bars.update_layout(title="Per-layer shift against base-zs (L1 of score differences)",
                       xaxis_title="layer", yaxis_title="L1", barmode="group", height=380)
    figs.append(("Per-layer shift", bars))
    faith = go.Figure()
    for name, curve in results["faithfulness"].items():
        faith.add_trace(go.Scatter(x=curve["sizes"], y=curve["recovered"], mode="lines+markers",
                                   name=name, line={"dash": "dot" if "@" in name else "solid"}))
    faith.update_layout(title="Faithfulness: share of the clean-corrupt gap recovered by "
                              "patching the top-n components", xaxis_title="components",
                        xaxis_type="log", yaxis_title="recovered", height=400)
    figs.append(("Faithfulness", faith))
    if results.get("logit_lens"):
        lens = go.Figure([go.Scatter(y=v, mode="lines+markers", name=c,
                                     line={"color": COLOURS.get(c)})
                          for c, v in results["logit_lens"].items()])
        lens.add_hline(y=0, line_dash="dash")
        lens.update_layout(title="Logit lens on control queries: log-rank(shortcut) - "
                                 "log-rank(computed answer); below 0 = commits to the shortcut",
                           xaxis_title="layer", yaxis_title="log-rank gap", height=400)
        figs.append(("Logit lens", lens))
    return figs


def _accuracy_table(rows: list[dict]) -> str:
    head = ("<table class='acc'><tr><th>model condition</th><th>queries</th><th>shots</th>"
            "<th>training samples</th><th>accuracy</th><th>95% CI</th><th>n</th></tr>")
    body = "".join(
        f"<tr><td>{r['model_condition']}</td><td>{r['query_condition']}</td><td>{r['shots']}"
        f"</td><td>{r['n_train']}</td><td>{r['accuracy']:.3f}</td>"
        f"<td>[{r['ci_low']:.3f}, {r['ci_high']:.3f}]</td><td>{r['n']}</td></tr>" for r in rows)
    return head + body + "</table>"


def _shift_table(results: dict) -> str:
    point = results["point"]
    keys = [k for k in point["icl"] if not k.startswith("overlap_p")]
    rows = "".join(f"<tr><td>{name}</td>" + "".join(
        f"<td>{point[name][k]:.3f}</td>" for k in keys) + "</tr>"
        for name in ("icl", "ft", "icl_vs_ft"))
    pvals = ", ".join(f"{k}: ICL {point['icl'][k]:.2g}, FT {point['ft'][k]:.2g}"
                      for k in point["icl"] if k.startswith("overlap_p"))
    return ("<table class='acc'><tr><th>comparison</th>" + "".join(f"<th>{k}</th>" for k in keys)
            + "</tr>" + rows + "</table><p class='note'>icl = d(base-icl, base-zs), ft = "
            "d(ft-zs, base-zs). Hypergeometric p-values of the top-k overlaps against chance "
            f"(small = more overlap than chance): {pvals}.</p>")


def _icl_heads_panel(info: dict | None) -> tuple[str, object | None]:
    """The ICL-heads section (HTML) and the AIE heatmap figure (or None)."""
    if not info:
        return "", None
    if "skipped" in info:
        return (f"<h2>ICL heads</h2><p class='note' id='icl-heads'>{html.escape(info['skipped'])}"
                "</p>"), None
    from interp.plots import heatmap

    k, usage = info["k"], info["conditions"]
    counts = ", ".join(f"{c}: {u['count']}/{k}" for c, u in usage.items())
    member = {c: set(u["shared"]) for c, u in usage.items()}
    rows = "".join(
        f"<tr><td>{r['head']}</td><td>{r['aie']:.4f}</td>" + "".join(
            f"<td>{'yes' if r['head'] in member[c] else ''}</td>" for c in usage) + "</tr>"
        for r in info["top"])
    inj = info.get("injection") or {}
    parts = [
        "<h2>ICL heads (function vectors)</h2>",
        f"<p id='icl-heads'>Top-{k} heads of the base model by average indirect effect: each "
        f"head's mean last-token output over clean {info['shots']}-shot prompts patched into "
        f"prompts with shuffled demonstration labels (P(correct) clean "
        f"{info['clean_prob']:.3f}, shuffled {info['shuffled_prob']:.3f}, n = {info['n']}). "
        f"<b>How many of them each circuit's top-{k} heads contain: {counts}.</b></p>",
        "<table class='acc'><tr><th>head</th><th>AIE</th>" +
        "".join(f"<th>in {c} circuit</th>" for c in usage) + "</tr>" + rows + "</table>"]
    if inj:
        parts.append(f"<p>Function vector (sum of the top-{k} heads' outputs) added at layer "
                     f"{inj['layer']} of zero-shot prompts: accuracy {inj['zero_shot']:.3f} -> "
                     f"{inj['with_function_vector']:.3f} (n = {inj['n']}).</p>")
    fig = heatmap(torch.tensor(info["aie"]), "Average indirect effect per head (ICL heads)",
                  "head", hover="AIE")
    return "\n".join(parts), fig


def write_report(out: Path, results: dict, config, ft_spec: str, maps: dict[str, ScoreMap]):
    views = results.get("attention_views") or {}
    figs = _figures(results, maps)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Circuit shift: {html.escape(config.model)} / {config.task}</title>",
        "<style>body{font-family:sans-serif;margin:24px;max-width:1200px}"
        "table.acc{border-collapse:collapse}table.acc td,table.acc th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}.verdict{background:#f4f4f8;padding:12px;"
        "border-left:4px solid #636efa}.note{color:#555;font-size:90%}</style>",
        f"<script>{circuitsvis_bundle()}</script>" if views else "",
        "</head><body>",
        f"<h1>Circuit shift: {html.escape(config.model)} on {config.task}</h1>",
        f"<p>{config.shots}-shot ICL vs {config.ft_method} fine-tuning on {config.n_train} "
        f"samples ({html.escape(str(ft_spec))}); {results['n_pairs']} counterfactual pairs, "
        f"{'activation' if config.exact else 'attribution'} patching.</p>",
        f"<div class='verdict' id='verdict'><b>Verdict.</b> {html.escape(results['verdict'])}"
        "</div>", "<h2>Accuracy</h2>", _accuracy_table(results["accuracy"]),
        "<h2>Circuit distances</h2>", _shift_table(results)]
    for i, (title, fig) in enumerate(figs):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    panel, aie_fig = _icl_heads_panel(results.get("icl_heads"))
    if panel:
        parts.append(panel)
    if aie_fig is not None:
        parts.append(aie_fig.to_html(full_html=False, include_plotlyjs=not figs))
    if views:
        parts.append("<h2>Attention of the top heads on an example prompt</h2><p class='note'>"
                     "Last tokens of the prompt; heads chosen from the ICL and FT circuits.</p>")
        parts.append(views_html(views))
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path

