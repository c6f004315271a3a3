"""MoEfication building blocks (Zhang et al., Findings ACL 2022), used by runner/methods/moefication.py.

    collect.py  FFN inputs over training tokens (forward hooks through runner.models.arch)
    split.py    neurons -> E equal experts: random | param_cluster | coact
    router.py   which experts a token uses: gt (oracle) | similarity | mlp (trained)
    module.py   the MoE FFN that computes only the selected experts (plm_kernels.moe_ffn), and the conversion
    stages.py   stage artefacts in the run directory, resumable and shared between runs
"""
