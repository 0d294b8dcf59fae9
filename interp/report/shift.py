"""The circuit-shift report: one standalone, offline ``report.html`` from ``results.json``.

It runs no model: conditions table (accuracy, gap, reliability, gate, shift, noise floor),
effects against shams with intervals, the verdict and the rule that fired, the dose-response
figure, head maps per condition, strategy-separating pairs, faithfulness, logit lens, ICL heads
and attention views.
"""

from __future__ import annotations

from pathlib import Path

import torch

from interp.circuits import ScoreMap
from interp.files import write_text
from interp.plots import heatmap
from interp.report.explorer import explorer_html
from interp.report.html import circuitsvis_bundle, esc, num, page, table, views_html, with_ci

#: readings beyond the conditions' own (``shift/table.py``)
_GUIDE = [
    ("gates", "Conditions without a measurable behaviour (gap interval not above 0) or without a "
     "reliable map (reliability below 0.7) have no circuit to compare."),
    ("noise floor", "The same estimator between two disjoint sets of n pairs of one condition: "
     "the null band of a shift at this sample size."),
]


def colours() -> dict[str, str]:
    """Each condition's colour, from the condition table (imported late: ``interp.shift``
    renders its report through this module)."""
    from interp.shift.table import TABLE

    return {spec.name: spec.colour for spec in TABLE}


def reading() -> list[tuple[str, str]]:
    """The report's reading guide: what each sham removes, then the gates and the noise floor."""
    from interp.shift.table import TABLE

    return [(spec.name, spec.reading) for spec in TABLE if spec.reading] + _GUIDE


def _conditions_table(results: dict) -> str:
    rows = []
    for name, c in results["conditions"].items():
        gate = c["gate"]
        status = ("<span class='ok'>passes</span>" if gate["passed"] else
                  f"<span class='bad' title='{esc(gate['reason'])}'>fails</span>")
        rows.append([esc(name), with_ci(c["accuracy"]["pattern"]),
                     with_ci(c["accuracy"]["control"]), with_ci(c["gap"]),
                     with_ci(c["reliability"]), status,
                     with_ci(results["shift"].get(name)), with_ci(c["noise_floor"]),
                     num(c["mean_prompt_tokens"], 1), num(c.get("label_agreement"), 2),
                     num(c.get("delta_w_norm"), 3)])
    return table(["condition", "pattern acc.", "control acc.", "gap (logits)", "reliability",
                  "gate", "shift vs base-zs", "noise floor", "prompt tokens", "label agreement",
                  "|dW|"], rows, "conditions")


def _effects_table(results: dict) -> str:
    rows = []
    for label, key in (("primary (other-task shams)", "effects"),
                       ("secondary (shuffled shams)", "effects_secondary")):
        for arm in ("icl", "ft", "icl_minus_ft"):
            e = results[key][arm]
            rows.append([esc(f"{label}: {arm}"), with_ci(e), esc(e.get("sham") or "")])
    for arm, e in results["effects_direct"].items():
        rows.append([esc(f"direct: {arm}"), with_ci(e), esc(e.get("sham") or "")])
    for label, v in (results.get("sensitivity") or {}).items():   # outside the verdict
        e = v["icl_minus_ft"]
        rows.append([esc(f"sensitivity ({label}): icl_minus_ft"), with_ci(e),
                     esc(e.get("sham") or "")])
    return table(["effect", "estimate [95% CI]", "sham"], rows, "effects")


def _trend_text(t: dict) -> str:
    if t["estimate"] is None:
        return t["reason"]
    return f"tau {t['estimate']:+.2f} [{t['ci95'][0]:+.2f}, {t['ci95'][1]:+.2f}]"


def _dose_figure(results: dict):
    """Per method, the sham-corrected shift and accuracy gain at each dose (one point per
    seed), the trends in the panel titles."""
    from plotly.subplots import make_subplots

    dose = results["dose_response"]
    trends = dose.get("trends", {})
    methods = (("icl", "shots"), ("ft", "step"))
    titles = [f"{m.upper()} {value}: {_trend_text(trends[m][value])}" if m in trends
              else f"{m.upper()} {value}" for m, _ in methods for value in ("shift", "gain")]
    fig = make_subplots(rows=2, cols=2, subplot_titles=titles)
    colour_of = colours()
    for row, (method, key) in enumerate(methods, 1):
        colour = colour_of["base-icl" if method == "icl" else "ft-zs"]
        for col, value in enumerate(("shift", "gain"), 1):
            points = [p for p in dose[method] if p.get(f"corrected_{value}") is not None]
            fig.add_scatter(x=[p[key] for p in points],
                            y=[p[f"corrected_{value}"] for p in points],
                            mode="markers", marker={"color": colour, "size": 9},
                            text=[f"seed {p['seed']}" for p in points], showlegend=False,
                            row=row, col=col)
            fig.update_xaxes(title_text=key, row=row, col=col)
            fig.update_yaxes(title_text=f"{value} minus sham", row=row, col=col)
    fig.update_layout(title="Dose-response: shift and pattern accuracy, each minus the "
                            "dose-matched sham (gated points; Kendall tau per seed, mean over "
                            "seeds)", height=620)
    if dose.get("reason"):
        fig.add_annotation(text=dose["reason"], showarrow=False, xref="paper", yref="paper",
                           x=0.5, y=0.5)
    return fig


def _figures(results: dict, maps: dict[str, ScoreMap]) -> list:
    import plotly.graph_objects as go

    colour_of = colours()
    figs = [("Dose-response", _dose_figure(results))]
    for cond in ("base-zs", "base-icl", "ft-zs"):
        fig = heatmap(maps[cond].heads, f"{cond}: effect per head (logit units)")
        fig._interp_id = f"heatmap-{cond}"
        figs.append((f"Head scores: {cond}", fig))
    for name, cond in (("ICL - zero-shot", "base-icl"), ("FT - zero-shot", "ft-zs")):
        figs.append((f"Difference: {name}", heatmap(
            maps[cond].heads - maps["base-zs"].heads, f"{name}: change of head scores",
            hover="change")))
    mlp = go.Figure([go.Bar(name=c, y=m.mlp.tolist(), marker_color=colour_of.get(c))
                     for c, m in maps.items()])
    mlp.update_layout(title="MLP scores per layer", xaxis_title="layer", barmode="group",
                      yaxis_title="effect (logits)", height=380)
    figs.append(("MLP scores", mlp))
    shift = results["per_layer_shift"]
    bars = go.Figure([go.Bar(name="ICL", y=shift["icl"], marker_color=colour_of["base-icl"]),
                      go.Bar(name="FT", y=shift["ft"], marker_color=colour_of["ft-zs"])])
    bars.update_layout(title="Per-layer L1 change of scores against base-zs", barmode="group",
                       xaxis_title="layer", yaxis_title="L1", height=360)
    figs.append(("Per-layer change", bars))
    probes = results.get("probes") or {}
    if probes.get("faithfulness"):
        faith = go.Figure()
        for name, curve in probes["faithfulness"].items():
            faith.add_trace(go.Scatter(x=curve["sizes"], y=curve["recovered"],
                                       mode="lines+markers", name=name,
                                       line={"dash": "dot" if "@" in name else "solid"}))
        faith.update_layout(title="Faithfulness: share of the gap recovered by patching the top-n "
                                  "components", xaxis_title="components", xaxis_type="log",
                            yaxis_title="recovered", height=400)
        figs.append(("Faithfulness", faith))
    for short, curves in (probes.get("logit_lens") or {}).items():
        lens = go.Figure([go.Scatter(y=v, mode="lines+markers", name=c,
                                     line={"color": colour_of.get(c)}) for c, v in curves.items()])
        lens.add_hline(y=0, line_dash="dash")
        lens.update_layout(title=f"Logit lens on control queries, shortcut '{short}': "
                                 "log-rank(shortcut) - log-rank(computed); below 0 = favours it",
                           xaxis_title="layer", yaxis_title="log-rank gap", height=380)
        figs.append((f"Logit lens: {short}", lens))
    heads = probes.get("icl_heads") or {}
    if "aie" in heads:
        figs.append(("ICL heads: average indirect effect",
                     heatmap(torch.tensor(heads["aie"]), "AIE per head", hover="AIE")))
    return figs


def _icl_heads_panel(info: dict | None) -> str:
    if not info:
        return ""
    if "skipped" in info:
        return f"<h2>ICL heads</h2><p class='note' id='icl-heads'>{esc(info['skipped'])}</p>"
    k, usage = info["k"], info["conditions"]
    counts = ", ".join(f"{c}: {u['count']}/{k}" for c, u in usage.items())
    rows = [[esc(r["head"]), f"{r['aie']:.4f}"] for r in info["top"]]
    inj = info.get("injection") or {}
    extra = (f"<p>Function vector added at layer {inj['layer']} of zero-shot prompts: accuracy "
             f"{inj['zero_shot']:.3f} -> {inj['with_function_vector']:.3f} (n = {inj['n']}).</p>"
             if inj else "")
    return ("<h2>ICL heads (function vectors)</h2>"
            f"<p id='icl-heads'>Top-{k} heads by |average indirect effect| on the run's "
            f"{info['shots']} demonstrations (P(correct) clean {info['clean_prob']:.3f}, "
            f"shuffled labels {info['shuffled_prob']:.3f}). <b>How many of them each circuit's "
            f"top-{k} heads contain: {counts}.</b></p>" + table(["head", "AIE"], rows) + extra)


def _separating_table(results: dict) -> str:
    rows = [[esc(c), with_ci(v["gap"]), num(v["reliability"])]
            for c, v in results.get("separating", {}).items()]
    return ("<h2>Strategy-separating pairs</h2><p class='note'>Pairs on which the declared "
            "shortcut and the full rule disagree: a condition that follows the shortcut shows no "
            "gap here.</p>" + table(["condition", "gap (logits)", "reliability"], rows,
                                    "separating"))


def _approximation_table(results: dict) -> str:
    check = results.get("approximation")
    if not check:
        return ""
    rows = [[esc(c), num(v["pearson"]), num(v["slope"]), "pass" if v["passes"] else "below"]
            for c, v in check.items() if isinstance(v, dict)]
    return ("<h2>Attribution against activation patching</h2><p class='note'>Every head's "
            f"attribution score against the exact effect of patching it, on "
            f"{len(check['pairs'])} pairs per condition; a condition below r = {check['bar']:g} "
            "may show the approximation's error as a shift.</p>"
            + table(["condition", "Pearson", "slope (exact on attribution)",
                     f">= {check['bar']:g}"], rows, "approximation"))


def write_report(out: Path, results: dict, config, maps: dict[str, ScoreMap],
                 explorer: dict | None = None) -> Path:
    views = (results.get("probes") or {}).get("attention_views") or {}
    rules = table(["rule", "verdict", "when"],
                  [[("<b>" + esc(name) + "</b>") if name == results["verdict_rule"] else esc(name),
                    esc(r["code"]), esc(r["when"])]
                   for name, r in results["verdict_rules"].items()], "rules")
    body = [
        f"<script>{circuitsvis_bundle()}</script>" if views or explorer else "",
        f"<h1>Circuit shift: {esc(config.model)} on {esc(config.task)}</h1>",
        f"<p>{config.shots}-shot ICL vs {esc(config.ft_method)} fine-tuning on {config.n_train} "
        f"samples; {results['n_pairs']} counterfactual pairs per map (and as many more for the "
        f"noise floor), attribution patching, {esc(results['bootstrap'])}.</p>",
        f"<div class='verdict' id='verdict'><b>Verdict: {esc(results['verdict_code'])}.</b> "
        f"{esc(results['verdict'])}</div>",
        "<h2>Verdict rules (fixed before the run)</h2>", rules,
        "<h2>Conditions</h2>", _conditions_table(results),
        "<h2>Effects against shams</h2>", _effects_table(results),
        "<h2>How to read a verdict</h2><ul>" + "".join(
            f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in reading()) + "</ul>",
        _separating_table(results), _approximation_table(results),
        _icl_heads_panel((results.get("probes") or {}).get("icl_heads"))]
    scripts = []
    if explorer:
        with_data = {**results, "probes": {**(results.get("probes") or {}),
                                           "explorer": explorer}}
        scripts.append(explorer_html(with_data))
    if views:
        scripts += ["<h2>Attention of the top heads on an example prompt</h2>", views_html(views)]
    text = page(f"Circuit shift: {config.model} / {config.task}", body,
                _figures(results, maps), scripts)
    return write_text(out / "report.html", text)
