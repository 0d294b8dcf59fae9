"""The ICL-versus-GD alignment results on disk: a table, the rows as JSON and a page of per-layer
curves."""

from __future__ import annotations

from pathlib import Path

import torch

from interp.align import seed_summary
from interp.files import count_nonfinite, write_csv, write_json
from interp.plots import write_page


def write_results(result: dict, out: str | Path, meta: dict) -> Path:
    out = Path(out)
    rows = result["rows"]
    mean, std = seed_summary(rows)
    table = (mean.round(4).astype(str) + " ± " + std.round(4).astype(str)).reset_index()
    write_csv(out / "alignment.csv", table)
    payload = {**meta, "lr": result["lr"], "lr_sweep": {m: {str(k): v for k, v in s.items()}
                                                        for m, s in result["lr_sweep"].items()},
               "rows": rows, "mean": mean.to_dict(), "std": std.to_dict(),
               "zero_update_convention": "cosine of a zero update scores 0, as "
                                         "torch.nn.functional.cosine_similarity(eps=1e-8) in Dai "
                                         "et al.'s compute_sim.py; counted in zero_updates"}
    payload["nonfinite_values"] = count_nonfinite(payload)
    write_json(out / "alignment.json", payload)
    write_page(out / "alignment.html", f"ICL vs GD alignment: {meta.get('model')}",
               layer_figures(rows))
    return out


def layer_figures(rows: list[dict]) -> list:
    import plotly.graph_objects as go

    figures = []
    for metric in ("SimAOU", "SimAOU_norm", "SimAM", "SimAM_delta"):
        fig = go.Figure()
        settings = dict.fromkeys(r["setting"] for r in rows if "per_layer" in r)
        for setting in settings:
            curves = torch.tensor([r["per_layer"][metric] for r in rows
                                   if r["setting"] == setting and "per_layer" in r])
            fig.add_trace(go.Scatter(y=curves.mean(0).tolist(), mode="lines+markers",
                                     name=setting))
        fig.update_layout(title=f"{metric} per layer (mean over seeds)", xaxis_title="layer",
                          yaxis_title=metric, height=380)
        figures.append(fig)
    return figures
