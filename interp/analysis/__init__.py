"""Patching, attribution and circuit analysis on TransformerLens bridges."""

from interp.analysis.attribution import (
    attribution_components,
    attribution_patch,
    direct_logit_attribution,
)
from interp.analysis.components import COMPONENTS, Component, kind
from interp.analysis.cross_model import cross_model_patch
from interp.analysis.edges import EdgeScores, edge_attribution, edge_faithfulness, patch_edges
from interp.analysis.icl_heads import ICLHeads, find_icl_heads, function_vector, inject
from interp.analysis.metrics import answer_logprob, answer_prob, first_answer_token, logit_diff
from interp.analysis.pairs import patch_pairs, read_pairs, task_pairs, tokenize_pairs
from interp.analysis.patching import ablate, activation_patch, patch_set, patch_sweep, run_metric
from interp.analysis.results import PatchResult

__all__ = ["COMPONENTS", "Component", "EdgeScores", "ICLHeads", "PatchResult", "ablate",
           "activation_patch", "answer_logprob", "answer_prob", "attribution_components",
           "attribution_patch", "cross_model_patch", "direct_logit_attribution",
           "edge_attribution", "edge_faithfulness", "find_icl_heads", "first_answer_token",
           "function_vector", "inject", "kind", "logit_diff", "patch_edges", "patch_pairs",
           "patch_set", "read_pairs", "patch_sweep", "run_metric", "task_pairs", "tokenize_pairs"]


def __dir__():
    return sorted(__all__)
