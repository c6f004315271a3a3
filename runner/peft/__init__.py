"""Building blocks of parameter-efficient tuning (method=peft):

    adapters   method.peft option -> an HF peft config with per-family targets from runner.models.arch;
               wrap, count, save, reload and merge adapters; BitFit's bias selection
    child      Child-Tuning's gradient masks (F: Bernoulli each step; D: a fixed Fisher-information mask),
               applied between gradient clipping and the optimizer's moment updates
"""
