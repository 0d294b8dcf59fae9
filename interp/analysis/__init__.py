"""Causal analysis on TransformerLens bridges: activation patching, attribution patching."""
