"""`python -m runner`: the Hydra entrypoint and nothing else (runner/run.py does the work)."""

import hydra
from omegaconf import DictConfig

from runner import cli_errors
from runner.results import register_resolvers

register_resolvers()
cli_errors.install()  # Hydra's composition errors (typos in keys, unknown options) as one `error:` line


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from runner.run import run

    return run(cfg)


if __name__ == "__main__":
    main()
