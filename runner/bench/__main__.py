"""`python -m runner.bench <name> [options]`: trainer (runner vs a bare HF Trainer script), moe, prune, quant."""

import importlib
import sys

BENCHES = {"trainer": "runner.bench.trainer", "moe": "runner.bench.moe", "moe-gpu": "runner.bench.moe_gpu",
           "prune": "runner.bench.prune", "quant": "runner.bench.quant"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHES:
        print(f"usage: python -m runner.bench {{{','.join(BENCHES)}}} [--help]", file=sys.stderr)
        return 2
    return importlib.import_module(BENCHES[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
