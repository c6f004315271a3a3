"""`python -m runner`: the Hydra entrypoint and nothing else (runner/run.py does the work)."""

import hydra
from omegaconf import DictConfig

from runner.results import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from runner.run import run

    return run(cfg)


if __name__ == "__main__":
    main()
