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

A "model" is a torch module (called as model(**inputs) under inference_mode) or any callable taking the
input dict of torch tensors (an ONNX Runtime session wrapped by runner.quant.onnx, say), so a deployed
artefact is timed beside the torch model it came from on the same batches. An encoder-decoder model (T5)
also gets what its decoder needs (model_inputs): one decoding step from the decoder start token, or, for
a sequence classifier that pools the decoder state at </s>, one </s> closing every row.

`interleaved` is the one interleaved timer of the project: every benchmark (runner/bench, plm_kernels/bench.py)
times through it. Options: the statistic over repetitions (min, the default: the least disturbed run; or
median) and the clock (wall, the default; cpu: this process's CPU time, which leaves out the time other
jobs hold the core when torch runs one thread; cuda: CUDA events around the calls).
"""

from __future__ import annotations

import inspect
import math
import statistics
import time
from collections.abc import Callable

import torch

SHAPES = ((1, 64), (32, 128))  # one sentence; a batch of 4,096 tokens
STATISTICS = {"min": min, "median": statistics.median}
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}  # and "cuda": CUDA events (_seconds)


def _seconds(fn: Callable[[], object], calls: int, clock: str = "wall") -> float:
    """Seconds per call of fn over `calls` back-to-back calls, on `clock`."""
    if clock == "cuda":  # kernels run asynchronously: events on the stream, then wait for the last one
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    now = CLOCKS[clock]
    t0 = now()
    for _ in range(calls):
        fn()
    return (now() - t0) / calls


def interleaved(variants: dict[str, tuple[Callable[[], object], Callable[[], object]]], repeats: int,
                min_seconds: float = 0.05, *, statistic: str = "min", clock: str = "wall",
                calls: int | None = None) -> dict[str, float]:
    """Seconds per call of each variant {name: (prepare, fn)}: the `statistic` (min | median) over `repeats`
    interleaved repetitions, each after the variant's untimed prepare() (e.g. setting the share of experts),
    timed on `clock` (wall | cpu | cuda). One sample is `calls` back-to-back calls, or by default as many as
    last min_seconds (picked in the warm-up repetition), so that millisecond calls are not timer noise."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got '{statistic}'")
    if clock not in (*CLOCKS, "cuda"):
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, cuda, got '{clock}'")
    samples: dict[str, list[float]] = {name: [] for name in variants}
    counts: dict[str, int] = {}
    for rep in range(repeats + 1):
        for name, (prepare, fn) in variants.items():
            prepare()
            if rep == 0:  # warm-up; picks how many back-to-back calls make one sample
                if calls is None:
                    counts[name] = max(1, math.ceil(min_seconds / max(_seconds(fn, 1, clock), 1e-6)))
                else:
                    counts[name] = calls
                    _seconds(fn, calls, clock)
            else:
                samples[name].append(_seconds(fn, counts[name], clock))
    pick = STATISTICS[statistic]
    return {name: pick(s) for name, s in samples.items()}


def inputs(batch: int, length: int, vocab_size: int, device: str | torch.device = "cpu", seed: int = 0) -> dict:
    """A batch of random token ids with a full attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, length), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def model_inputs(model, batch: dict) -> dict:
    """The batch as `model` takes it. Encoder-only models and plain callables take it as is. An
    encoder-decoder model (T5) runs one decoding step from its decoder start token, unless it is a sequence
    classifier that pools the decoder state at </s> (T5ForSequenceClassification: the decoder reads the input
    shifted right, and every row needs the same number of </s>): then each row gets exactly one </s>, last."""
    config = getattr(model, "config", None)
    if not getattr(config, "is_encoder_decoder", False) or not isinstance(model, torch.nn.Module) \
            or "decoder_input_ids" not in inspect.signature(model.forward).parameters:
        return batch  # T5EncoderModel has no decoder
    ids = batch["input_ids"]
    if type(model).__name__.endswith("ForSequenceClassification"):
        eos = config.eos_token_id
        ids = ids.masked_fill(ids == eos, 1 if eos == 0 else 0)  # any token but </s>
        ids[:, -1] = eos
        return {**batch, "input_ids": ids}
    start = config.decoder_start_token_id
    start = config.pad_token_id if start is None else start
    return {**batch, "decoder_input_ids": torch.full((ids.shape[0], 1), start, dtype=ids.dtype, device=ids.device)}


def measure(models: dict[str, torch.nn.Module | Callable[[dict], object]], *, reference: str, vocab_size: int,
            shapes: tuple[tuple[int, int], ...] = SHAPES, repeats: int = 5, device: str | torch.device = "cpu",
            prepare: dict[str, Callable[[], object]] | None = None, min_seconds: float = 0.05,
            statistic: str = "min", clock: str = "wall") -> dict:
    """{"<b>x<L>": {"ms": {name: ms per batch}, "speedup": {name: reference ms / ms}}, ...} plus the
    settings, for every shape. `prepare[name]()` runs (untimed) before each timed call of that model;
    `statistic` and `clock` are interleaved()'s."""
    if reference not in models:
        raise ValueError(f"reference '{reference}' is not one of the models {', '.join(models)}")
    prepare = prepare or {}
    for model in models.values():
        if isinstance(model, torch.nn.Module):
            model.eval().to(device)
    out: dict = {"reference": reference, "repeats": repeats, "device": str(device),
                 "threads": torch.get_num_threads(), "statistic": statistic, "clock": clock}
    for batch, length in shapes:
        x = inputs(batch, length, vocab_size, device)
        batches = {name: model_inputs(model, x) for name, model in models.items()}
        variants = {name: (prepare.get(name, _nothing), lambda m=model, b=batches[name]: _forward(m, b))
                    for name, model in models.items()}
        seconds = interleaved(variants, repeats, min_seconds, statistic=statistic, clock=clock)
        ms = {name: round(s * 1000, 3) for name, s in seconds.items()}
        out[f"{batch}x{length}"] = {"ms": ms,
                                    "speedup": {name: round(seconds[reference] / s, 3) for name, s in seconds.items()}}
    return out


def record(ctx, models: dict[str, torch.nn.Module | Callable[[dict], object]], reference: str, **kwargs) -> dict:
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


def _forward(model, batch: dict):
    if not isinstance(model, torch.nn.Module):
        return model(batch)
    with torch.inference_mode():
        return model(**batch)


def _nothing() -> None:
    pass
