"""Block-size configs for the Triton MoE kernels, and a per-device JSON cache of tuned choices.

triton.autotune is not used: the MoE config's BLOCK_M must be known *before* the kernels run,
because align() pads each expert's pair list to it. So the whole pipeline (align + GEMM1 +
GEMM2 + reduce) is timed per candidate, once per problem key, and the winner is written to
~/.cache/plm-runner/kernels/<device-name>.json (PLM_KERNELS_CACHE_DIR overrides the folder;
PLM_KERNELS_AUTOTUNE=0 skips timing and uses the heuristic default).

Under TRITON_INTERPRET=1 there is exactly one config: timing several needs a GPU, and the
interpreter is fastest with few, large programs.
"""

import json
import os
import re
from pathlib import Path

# GPU candidates (H100-oriented guesses, never timed in this repo: no GPU was available).
# BLOCK_N tiles GEMM1's m (capped at next_pow2(m)) and GEMM2's d; BLOCK_K tiles d and m.
GPU_CONFIGS = (
    dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3, FUSED=False),
    dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3, FUSED=False),
    dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3, FUSED=False),
    dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3, FUSED=False),
    dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=4, FUSED=False),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3, FUSED=False),
    dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3, FUSED=True),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3, FUSED=True),
)
# Hopper (compute capability >= 9.0) candidates, added to the list above on such devices only: larger
# tiles, 3-5 stages, 8 warps; for small experts (m <= 128) the fused kernel with tall (128-row) blocks, so
# each block reads its experts' weights once for 128 pairs and H never leaves the chip, and wide BLOCK_N
# sweeps of d. CANDIDATES, NOT TUNED: none was timed on an H100/H200 yet (plm_kernels/device_check.sh does).
HOPPER_CONFIGS = (
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=4, FUSED=False),
    dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, num_warps=8, num_stages=3, FUSED=False),
    dict(BLOCK_M=64, BLOCK_N=256, BLOCK_K=64, num_warps=8, num_stages=4, FUSED=False),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, num_warps=8, num_stages=3, FUSED=False),
    dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=5, FUSED=False),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=4, FUSED=True, FUSED_MAX_M=128),
    dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, num_warps=8, num_stages=3, FUSED=True, FUSED_MAX_M=128),
    dict(BLOCK_M=64, BLOCK_N=256, BLOCK_K=64, num_warps=8, num_stages=5, FUSED=True, FUSED_MAX_M=128),
)
HOPPER_CAPABILITY = (9, 0)
INTERPRETER_CONFIG = dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=1, FUSED=False)
# The fused GEMM1+GEMM2 kernel keeps a (BLOCK_M, next_pow2(m)) H tile in registers: up to m = 64 by
# default; the 8-warp Hopper fused configs say FUSED_MAX_M=128 (a 128 x 128 fp32 tile over 256 threads is
# 64 registers per thread).
FUSED_MAX_M = 64


def fused_max_m(cfg) -> int:
    return cfg.get("FUSED_MAX_M", FUSED_MAX_M)


def is_hopper(capability) -> bool:
    return capability is not None and tuple(capability) >= HOPPER_CAPABILITY


def candidate_configs(m: int, rows_per_expert: float, interpreter: bool, capability=None):
    """Configs worth timing for experts of m neurons receiving `rows_per_expert` pairs on average.

    capability: the device's (major, minor); the Hopper candidates join from (9, 0) on.
    """
    if interpreter:
        return [dict(INTERPRETER_CONFIG)]
    out = []
    pool = GPU_CONFIGS + (HOPPER_CONFIGS if is_hopper(capability) else ())
    for cfg in pool:
        if cfg["FUSED"] and m > fused_max_m(cfg):
            continue
        # a block much taller than an expert's pair list is mostly padding
        if cfg["BLOCK_M"] > 16 and cfg["BLOCK_M"] > 2 * rows_per_expert:
            continue
        out.append(dict(cfg))
    return out


def default_config(m: int, rows_per_expert: float, interpreter: bool):
    """The untimed choice: the tallest block that is not mostly padding (the base list only)."""
    cands = [c for c in candidate_configs(m, rows_per_expert, interpreter) if not c["FUSED"]]
    return max(cands, key=lambda c: (c["BLOCK_M"], -c["BLOCK_N"]))


def cache_path(device_name: str) -> Path:
    folder = os.environ.get("PLM_KERNELS_CACHE_DIR") or Path.home() / ".cache" / "plm-runner" / "kernels"
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", device_name).strip("_") or "device"
    return Path(folder) / f"{safe}.json"


def load_cache(device_name: str, version: str) -> dict:
    path = cache_path(device_name)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    # choices tuned under another Triton version may no longer be the best (or compile)
    if not isinstance(data, dict) or data.get("triton") != version:
        return {}
    return dict(data.get("configs", {}))


def save_cache(device_name: str, version: str, configs: dict) -> None:
    path = cache_path(device_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"triton": version, "configs": configs}, indent=1, sort_keys=True))
    os.replace(tmp, path)  # atomic, so a concurrent reader never sees half a file


# (device name, triton version, key) -> config: the JSON file is read once per key and process
_MEMO: dict = {}


def autotune_enabled() -> bool:
    return os.environ.get("PLM_KERNELS_AUTOTUNE", "1").lower() not in ("0", "false", "no", "off")


def pick_config(key: str, candidates, run, *, device_name: str, version: str, timer):
    """Return the fastest candidate for `key`, timing them on a cache miss.

    run(cfg) executes the op with one config; timer(fn) returns its time in ms. A candidate
    that fails (e.g. too much shared memory for fp32) is skipped.
    """
    if len(candidates) == 1:
        return candidates[0]
    memo_key = (device_name, version, key)
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    cache = load_cache(device_name, version)
    if key in cache and cache[key] in candidates:
        _MEMO[memo_key] = cache[key]
        return cache[key]
    timings = []
    for cfg in candidates:
        try:
            timings.append((timer(lambda cfg=cfg: run(cfg)), cfg))
        except Exception:  # noqa: BLE001 - a config that cannot compile is just not a candidate
            continue
    if not timings:
        raise RuntimeError(f"no Triton config could run for {key}")
    best = min(timings, key=lambda tc: tc[0])[1]
    cache = load_cache(device_name, version)  # re-read: another process may have added keys
    cache[key] = best
    save_cache(device_name, version, cache)
    _MEMO[memo_key] = best
    return best
