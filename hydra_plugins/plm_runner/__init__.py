"""plm-runner's Hydra plugins (Hydra instantiates plugins only from the `hydra_plugins` namespace):
the launchers behind hydra/launcher=sequential|local|slurm, in launchers.py."""
