"""Benchmarks: each prints ratios measured side by side in one process (ours vs the plain baseline)."""
