"""Edge attribution patching (EAP) between heads and MLPs, on grouped-query attention too.

A forward (:func:`interp.arch.receiver_forward`, from the architecture's adapter) in which every
*receiver* gets its own copy of the residual stream it reads: each query head's query, key and
value inputs (key/value groups expanded per query head, so an edge into head h's keys is separate
from one into the other heads of its group), each MLP's input and the unembedding's input. A zero
tensor added to each copy leaves the forward unchanged, and its gradient is the gradient with
respect to that receiver's input.

Senders are the embeddings, every head's write into the residual stream (``z_h`` through its
slice of the output projection) and every MLP's output. The score of edge u -> v is
``(a_u(clean) - a_u(corrupt)) . d metric / d input_v`` at the corrupt run, summed over
positions: the first-order estimate of patching that single edge (denoising, as
``transformer_lens.patching``'s convention). :func:`patch_edges` runs the exact patch of any set
of edges, for checks and for :func:`edge_faithfulness`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from interp.arch import receiver_forward
from interp.errors import ConfigError
from interp.models import LoadedModel
from interp.results import Result

EDGE_INPUTS = ("q", "k", "v")


def split_forward(model: LoadedModel, ids: torch.Tensor, deltas: dict | None = None):
    """:func:`interp.arch.receiver_forward` of ``model`` (the adapter's paths)."""
    return receiver_forward(model.hf, ids, deltas)


@dataclass
class EdgeScores(Result):
    """Per pair, edges by receiver: ``heads [L, H, 3 (q, k, v), S, B]``, ``mlp [L, S, B]``,
    ``logits [S, B]`` over senders ``S = 1 + L * H + L`` (embeddings, heads layer-major, MLPs).
    Edges whose sender is not upstream of the receiver are 0 (``valid`` masks them)."""

    heads: torch.Tensor
    mlp: torch.Tensor
    logits: torch.Tensor
    n_layers: int
    n_heads: int

    file_stem = "edges"

    def sender_names(self) -> list[str]:
        L, H = self.n_layers, self.n_heads
        return (["embed"] + [f"L{l}H{h}" for l in range(L) for h in range(H)] +
                [f"L{l}MLP" for l in range(L)])

    def sender_layer(self) -> torch.Tensor:
        """Layer each sender writes in (embeddings -1); MLPs write after their layer's heads."""
        L, H = self.n_layers, self.n_heads
        return torch.tensor([-1.0] + [l for l in range(L) for _ in range(H)] +
                            [l + 0.5 for l in range(L)])

    def valid(self) -> dict[str, torch.Tensor]:
        src = self.sender_layer()
        L = self.n_layers
        layers = torch.arange(L, dtype=torch.float)
        return {"heads": (src[None, :] < layers[:, None]),            # [L, S] (per head/kind)
                "mlp": (src[None, :] < layers[:, None] + 0.5),
                "logits": torch.ones(len(src), dtype=torch.bool)}

    def ranked(self, k: int | None = None) -> list[dict]:
        """Edges by |mean score| over pairs, largest first."""
        names = self.sender_names()
        valid = self.valid()
        rows = []
        mean_h = self.heads.mean(-1)
        for l in range(self.n_layers):
            for h in range(self.n_heads):
                for j, kind in enumerate(EDGE_INPUTS):
                    for s in valid["heads"][l].nonzero().flatten().tolist():
                        rows.append((float(mean_h[l, h, j, s]), names[s], f"L{l}H{h}.{kind}",
                                     ("heads", l, h, j, s)))
            for s in valid["mlp"][l].nonzero().flatten().tolist():
                rows.append((float(self.mlp[l, s].mean()), names[s], f"L{l}MLP",
                             ("mlp", l, s)))
        for s in range(len(names)):
            rows.append((float(self.logits[s].mean()), names[s], "logits", ("logits", s)))
        rows.sort(key=lambda r: -abs(r[0]))
        return [{"sender": a, "receiver": b, "score": v, "index": i}
                for v, a, b, i in rows[:k]]


    def to_frame(self):
        """One row per valid edge: ``component`` (``sender->receiver``), sender, receiver and
        the mean score over pairs (``value``)."""
        import pandas as pd

        rows = [{"component": f"{r['sender']}->{r['receiver']}", "sender": r["sender"],
                 "receiver": r["receiver"], "value": r["score"]} for r in self.ranked()]
        return pd.DataFrame(rows)

    def _tensors(self):
        return {"heads": self.heads, "mlp": self.mlp, "logits": self.logits}

    def _meta(self):
        return {"n_layers": self.n_layers, "n_heads": self.n_heads}

    @classmethod
    def _from(cls, tensors, meta):
        return cls(tensors["heads"], tensors["mlp"], tensors["logits"], meta["n_layers"],
                   meta["n_heads"])


def _senders_flat(senders: dict) -> torch.Tensor:
    """``[S, B, T, d]``: embeddings, heads (layer-major), MLPs."""
    heads = senders["heads"].permute(0, 3, 1, 2, 4).flatten(0, 1)   # [L*H, B, T, d]
    return torch.cat([senders["embed"][None], heads, senders["mlp"]])


def _zero_deltas(model: LoadedModel, B: int, T: int, device) -> dict:
    L, H, d = model.n_layers, model.n_heads, model.d_model
    make = lambda *shape: torch.zeros(*shape, device=device, dtype=model.dtype,  # noqa: E731
                                      requires_grad=True)
    return {"q": make(L, B, T, H, d), "k": make(L, B, T, H, d), "v": make(L, B, T, H, d),
            "mlp": make(L, B, T, d), "out": make(B, T, d)}


def edge_attribution(model: LoadedModel, clean: torch.Tensor, corrupt: torch.Tensor,
                     metric: Callable[[torch.Tensor], torch.Tensor]) -> EdgeScores:
    """EAP scores of every edge for each pair (``clean``/``corrupt`` ``[B, T]`` of one length):
    one clean forward, one corrupt forward with receiver copies, one backward."""
    if clean.shape != corrupt.shape:
        raise ConfigError(f"clean {tuple(clean.shape)} and corrupt {tuple(corrupt.shape)} differ")
    B, T = corrupt.shape
    with torch.no_grad():
        _, clean_s = split_forward(model, clean)
    deltas = _zero_deltas(model, B, T, corrupt.device)
    with torch.enable_grad():
        logits, corrupt_s = split_forward(model, corrupt, deltas)
        metric(logits).sum().backward()
    diff = (_senders_flat(clean_s) - _senders_flat(corrupt_s)).detach().float()  # [S, B, T, d]
    g = {k: v.grad.float() for k, v in deltas.items()}
    heads = torch.stack([torch.einsum("sbtd,lbthd->lhsb", diff, g[k]) for k in EDGE_INPUTS], 2)
    mlp = torch.einsum("sbtd,lbtd->lsb", diff, g["mlp"])
    logits_s = torch.einsum("sbtd,btd->sb", diff, g["out"])
    scores = EdgeScores(heads, mlp, logits_s, model.n_layers, model.n_heads)
    valid = scores.valid()
    scores.heads *= valid["heads"][:, None, None, :, None]
    scores.mlp *= valid["mlp"][..., None]
    return scores


@torch.no_grad()
def patch_edges(model: LoadedModel, clean: torch.Tensor, corrupt: torch.Tensor,
                metric: Callable[[torch.Tensor], torch.Tensor], edges: Sequence[tuple],
                scale: float = 1.0) -> torch.Tensor:
    """Exact patch of a set of edges (``EdgeScores.ranked()[i]["index"]`` tuples): the corrupt
    run in which each receiver's input gets ``scale * (a_u(clean) - a_u(corrupt))`` of each of
    its senders u. Returns the metric ``[B]``."""
    _, clean_s = split_forward(model, clean)
    _, corrupt_s = split_forward(model, corrupt)
    diff = _senders_flat(clean_s) - _senders_flat(corrupt_s)           # [S, B, T, d]
    return _patched_metric(model, corrupt, metric, diff * scale, edges)


def _patched_metric(model: LoadedModel, corrupt: torch.Tensor, metric, diff: torch.Tensor,
                    edges: Sequence[tuple]) -> torch.Tensor:
    """The corrupt run with ``diff[s]`` added to the input of each edge's receiver."""
    B, T = corrupt.shape
    deltas = {k: v.detach() for k, v in _zero_deltas(model, B, T, corrupt.device).items()}
    for edge in edges:
        if edge[0] == "heads":
            _, l, h, j, s = edge
            deltas[EDGE_INPUTS[j]][l, :, :, h] += diff[s]
        elif edge[0] == "mlp":
            _, l, s = edge
            deltas["mlp"][l] += diff[s]
        else:
            deltas["out"] += diff[edge[1]]
    logits, _ = split_forward(model, corrupt, deltas)
    return metric(logits)


def edge_faithfulness(model: LoadedModel, clean: torch.Tensor, corrupt: torch.Tensor,
                      metric, scores: EdgeScores, sizes: Sequence[int] = (1, 10, 100, 1000)
                      ) -> dict:
    """Share of the clean-corrupt metric gap recovered by patching the top-n edges together."""
    with torch.no_grad():
        clean_logits, clean_s = split_forward(model, clean)
        corrupt_logits, corrupt_s = split_forward(model, corrupt)
    m_clean, m_corrupt = metric(clean_logits).float(), metric(corrupt_logits).float()
    diff = _senders_flat(clean_s) - _senders_flat(corrupt_s)
    ranked = scores.ranked()
    gap = float((m_clean - m_corrupt).sum())
    out = {"sizes": [], "recovered": []}
    for n in sizes:
        if n > len(ranked):
            break
        with torch.no_grad():
            patched = _patched_metric(model, corrupt, metric, diff,
                                      [r["index"] for r in ranked[:n]])
        out["sizes"].append(n)
        out["recovered"].append(float((patched.float() - m_corrupt).sum()) / gap
                                if abs(gap) > 1e-9 else float("nan"))
    return out
