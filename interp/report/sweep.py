"""A sweep's figures: accuracy against shots and training samples, and the shifts."""

from __future__ import annotations


def sweep_figures(acc, shift) -> list:
    """Accuracy vs shots (ICL), accuracy vs training samples (FT), shift(ICL) vs shift(FT)."""
    import plotly.express as px

    figs = []
    if len(acc):
        mean = (acc.groupby(["model", "task", "kind", "condition", "shots", "n_train"],
                            as_index=False)["accuracy"].mean())
        icl = mean[mean["kind"] == "icl"]
        if len(icl):
            fig = px.line(icl, x="shots", y="accuracy", color="task", line_dash="condition",
                          facet_col="model", markers=True, title="ICL: accuracy vs shots")
            fig.update_yaxes(range=[0, 1])
            figs.append(fig)
        ft = mean[mean["kind"] == "finetune"]
        if len(ft):
            fig = px.line(ft, x="n_train", y="accuracy", color="task", line_dash="condition",
                          facet_col="model", markers=True, log_x=True,
                          title="Fine-tuning: zero-shot accuracy vs training samples")
            fig.update_yaxes(range=[0, 1])
            figs.append(fig)
    if len(shift) and shift[["shift_icl", "shift_ft"]].notna().any().any():
        s = shift.groupby(["model", "task"], as_index=False)[["shift_icl", "shift_ft"]].mean()
        long = s.melt(id_vars=["model", "task"], value_vars=["shift_icl", "shift_ft"],
                      var_name="condition", value_name="shift")
        fig = px.bar(long, x="task", y="shift", color="condition", barmode="group",
                     facet_col="model", title="Circuit shift against base zero-shot: ICL vs FT "
                                              "(disattenuated distance; see each run's report "
                                              "for shams and verdicts)")
        figs.append(fig)
    return figs
