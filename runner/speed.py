"""Measured inference speed: two or more models timed side by side on the same batches.

Every compression method reports the speedup of its model over its dense base with this block, next to
its accuracy (results.json `speed`):

    speed.record(ctx, {"dense": dense, "moe@0.25": moe}, reference="dense",
                 prepare={"moe@0.25": lambda: module.set_ratio(moe, 0.25)})

Timing is interleaved: each repetition runs every model once on the same batch, so load from other
processes on a shared machine hits all of them alike; the figure per model is the minimum over repetitions
(the least disturbed run), and a repetition of a fast model loops until it lasts min_seconds so that
millisecond calls are not timer noise. The first repetition is a warm-up. Inputs are random token ids
(seeded), full-length rows: the cost of a forward does not depend on which tokens they are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

SHAPES = ((1, 64), (32, 128))  # one sentence; a batch of 4,096 tokens


def _seconds(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def interleaved(variants: dict[str, tuple[Callable[[], object], Callable[[], object]]], repeats: int,
                min_seconds: float = 0.05) -> dict[str, float]:
    """Seconds per call of each variant {name: (prepare, fn)}: the minimum over `repeats` interleaved
    repetitions, each after the variant's untimed prepare() (e.g. setting the share of experts)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    best = dict.fromkeys(variants, math.inf)
    calls: dict[str, int] = {}
    for rep in range(repeats + 1):
        for name, (prepare, fn) in variants.items():
            prepare()
            if rep == 0:  # warm-up; picks how many back-to-back calls make one sample
                calls[name] = max(1, math.ceil(min_seconds / max(_seconds(fn, 1), 1e-6)))
            else:
                best[name] = min(best[name], _seconds(fn, calls[name]))
    return best


def inputs(batch: int, length: int, vocab_size: int, device: str | torch.device = "cpu", seed: int = 0) -> dict:
    """A batch of random token ids with a full attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, length), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def measure(models: dict[str, torch.nn.Module], *, reference: str, vocab_size: int,
            shapes: tuple[tuple[int, int], ...] = SHAPES, repeats: int = 5, device: str | torch.device = "cpu",
            prepare: dict[str, Callable[[], object]] | None = None, min_seconds: float = 0.05) -> dict:
    """{"<b>x<L>": {"ms": {name: ms per batch}, "speedup": {name: reference ms / ms}}, ...} plus the
    settings, for every shape. `prepare[name]()` runs (untimed) before each timed call of that model."""
    if reference not in models:
        raise ValueError(f"reference '{reference}' is not one of the models {', '.join(models)}")
    prepare = prepare or {}
    for model in models.values():
        model.eval().to(device)
    out: dict = {"reference": reference, "repeats": repeats, "device": str(device),
                 "threads": torch.get_num_threads(), "statistic": "min"}
    for batch, length in shapes:
        x = inputs(batch, length, vocab_size, device)

        def forward(model, x=x):
            with torch.inference_mode():
                return model(**x)

        variants = {name: (prepare.get(name, _nothing), lambda m=model: forward(m)) for name, model in models.items()}
        seconds = interleaved(variants, repeats, min_seconds)
        ms = {name: round(s * 1000, 3) for name, s in seconds.items()}
        out[f"{batch}x{length}"] = {"ms": ms,
                                    "speedup": {name: round(seconds[reference] / s, 3) for name, s in seconds.items()}}
    return out


def record(ctx, models: dict[str, torch.nn.Module], reference: str, **kwargs) -> dict:
    """measure() on the run's device with the tokenizer's vocabulary; stored as results.json `speed` and
    logged one line per shape."""
    device = "cuda" if ctx.hardware.device == "cuda" else "cpu"
    result = measure(models, reference=reference, vocab_size=len(ctx.tokenizer), device=device, **kwargs)
    for shape, row in result.items():
        if isinstance(row, dict):
            ctx.log(f"speed {shape}: " + ", ".join(f"{n} {row['ms'][n]:.2f} ms ({row['speedup'][n]:.2f}x)"
                                                   for n in row["ms"]))
    ctx.info["speed"] = result
    return result


def _nothing() -> None:
    pass
