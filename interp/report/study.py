"""The study report: ``study.html`` from the claims table (no model runs)."""

from __future__ import annotations

from pathlib import Path

from interp.claims import CLAIMS
from interp.files import write_text
from interp.report.html import esc, num, page, table

VERDICT_COLOURS = {"holds": "#1a7f37", "contradicted": "#b42318", "no_effect": "#6e7781",
                   "positive_below_margin": "#57ab5a", "negative_below_margin": "#e5534b",
                   "inconclusive": "#9a6700", "moot": "#8250df"}


def _forest(claims, summary, definitions) -> object:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = [c.name for c in definitions]
    fig = make_subplots(rows=len(names), cols=1, subplot_titles=names, vertical_spacing=0.05)
    pooled = {(p["claim"], p["model"]): p for p in summary["pooled"]}
    for r, claim in enumerate(definitions, 1):
        part = claims[claims.claim == claim.name]
        labels, xs, lo, hi, colours = [], [], [], [], []
        for _, row in part.iterrows():
            labels.append(f"{row['model']} / {row['task']}")
            defined = row["estimate"] == row["estimate"] and row["estimate"] is not None
            xs.append(row["estimate"] if defined else None)
            lo.append(row["estimate"] - row["ci_low"] if defined else None)
            hi.append(row["ci_high"] - row["estimate"] if defined else None)
            colours.append(VERDICT_COLOURS.get(row["verdict"], "#000"))
        for model in dict.fromkeys(part.model):
            p = pooled.get((claim.name, model))
            if p and p["estimate"] is not None:
                labels.append(f"{model} / pooled")
                xs.append(p["estimate"])
                lo.append(p["estimate"] - p["ci_low"])
                hi.append(p["ci_high"] - p["estimate"])
                colours.append("#000")
        fig.add_trace(go.Scatter(
            x=xs, y=labels, mode="markers", marker={"color": colours, "size": 9},
            error_x={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo},
            showlegend=False, hovertemplate="%{y}: %{x:.3f}<extra></extra>"), row=r, col=1)
        fig.add_vrect(x0=-claim.margin, x1=claim.margin, fillcolor="#cccccc", opacity=0.35,
                      line_width=0, row=r, col=1)
        fig.add_vline(x=0, line_dash="dash", row=r, col=1)
    fig.update_layout(height=max(500, 170 * len(names) + 12 * len(claims)),
                      title="Every claim: estimate and 95 % interval (grey band: +-margin; "
                            "colour: verdict; black: pooled across tasks)")
    return fig


def write_study_report(out: Path, claims, summary: dict, cells: list[dict], config) -> Path:
    holm = {(h["claim"], h["task"], h["model"]): h["p_holm"] for h in summary["holm"]}
    rows = []
    for _, r in claims.iterrows():
        colour = VERDICT_COLOURS.get(r["verdict"], "#000")
        ci = ("&ndash;" if r["ci_low"] is None or r["ci_low"] != r["ci_low"]
              else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
        est = "&ndash;" if r["estimate"] is None or r["estimate"] != r["estimate"] \
            else f"{r['estimate']:.3f}"
        mdd = r.get("mdd")
        rows.append([esc(r["claim"]), esc(r["model"]), esc(r["task"]), est, ci,
                     num(None if mdd is None or mdd != mdd else mdd),
                     f"<b style='color:{colour}'>{esc(r['verdict'])}</b>",
                     num(holm.get((r["claim"], r["task"], r["model"]))),
                     esc(r["reason"] or "")])
    pooled = [[esc(p["claim"]), esc(p["model"]), str(p["tasks"]), num(p["estimate"]),
               "&ndash;" if p["estimate"] is None else f"[{p['ci_low']:.3f}, {p['ci_high']:.3f}]",
               esc(p["verdict"]), esc(p.get("reason") or "")]
              for p in summary["pooled"]]
    links = []
    for cell in cells:
        report = Path(cell["dir"]) / "report.html"
        status = esc(cell.get("status", ""))
        link = (f"<a href='{esc(report.as_posix())}'>{esc(cell['model'])} / "
                f"{esc(cell['task'])}</a>" if cell.get("status") == "done"
                else f"{esc(cell['model'])} / {esc(cell['task'])}")
        links.append(f"<li>{link}: {status}</li>")
    definitions = table(["claim", "prediction", "margin", "what it measures"],
                        [[esc(c.name), esc(c.prediction), f"{c.margin:g}", esc(c.measures)]
                         for c in CLAIMS], "definitions")
    total = len(config.models) * len(config.tasks)
    sizes = config.shift.resolved()
    partial = ([f"<p class='bad' id='partial'>Partial: {len(cells)} of {total} cells so far "
                "(the study was interrupted or is still running; the same command resumes)."
                "</p>"] if len(cells) < total else [])
    body = [f"<h1>Circuit-shift study: {esc(', '.join(config.models))}</h1>", *partial,
            f"<p>Tasks: {esc(', '.join(config.tasks))}; {sizes.demo_seeds} demonstration sets, "
            f"{sizes.ft_seeds} fine-tuning seeds, {sizes.n_pairs} pairs per map, "
            f"{sizes.shots} shots, {esc(sizes.ft_method)} fine-tuning on {sizes.n_train} "
            "samples.</p>",
            "<h2>Claims (predictions fixed before any run)</h2>", definitions,
            "<p class='note'>Verdict from the interval and the claim's margin (the smallest value "
            "that counts): holds (above +margin), contradicted (below -margin), "
            "positive/negative_below_margin (beyond 0 but not the margin), no_effect (inside "
            "the margin), inconclusive (otherwise or undefined), moot (necessity/sufficiency "
            "when the gain is not established: its interval over all pairs reaches 0). holds "
            "and contradicted stand only if their minimal-effect test survives Holm's "
            "correction over every claim x cell test of the study (p_holm). MDD: minimum "
            "detectable difference at 80 % power.</p>",
            "<h2>Claims per model and task</h2>",
            table(["claim", "model", "task", "estimate", "95% CI", "MDD", "verdict", "p_holm",
                   "reason"], rows, "claims"),
            "<h2>Pooled across tasks (random effects, Hartung-Knapp t interval; 3+ tasks)</h2>",
            table(["claim", "model", "tasks", "estimate", "95% CI", "verdict", "reason"], pooled,
                  "pooled"),
            "<h2>Runs</h2><ul id='runs'>" + "".join(links) + "</ul>"]
    text = page("Circuit-shift study", body, [("Forest plot", _forest(claims, summary, CLAIMS))])
    return write_text(out / "study.html", text)
