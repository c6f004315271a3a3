"""Pruning building blocks (method=prune): the cubic sparsity schedule, weight masks (magnitude, movement,
soft movement) as torch parametrizations, head/FFN-neuron importance for structured pruning, and saving and
loading of physically pruned models with their pruning plan. Model internals live in runner.models.arch."""
