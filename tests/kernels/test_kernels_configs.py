"""Config lists and the per-device JSON cache of tuned choices (no GPU needed: fake timers)."""

import json

import pytest

from plm_kernels import configs


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PLM_KERNELS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(configs, "_MEMO", {})
    return tmp_path


def test_interpreter_gets_exactly_one_config():
    assert configs.candidate_configs(32, 1e6, interpreter=True) == [configs.INTERPRETER_CONFIG]
    assert configs.default_config(384, 1.0, interpreter=True) == configs.INTERPRETER_CONFIG


def test_gpu_candidates_are_pruned():
    big = configs.candidate_configs(32, 4096.0, interpreter=False)
    assert len(big) == len(configs.GPU_CONFIGS)
    no_fused = configs.candidate_configs(128, 4096.0, interpreter=False)
    assert no_fused and not any(c["FUSED"] for c in no_fused)
    small = configs.candidate_configs(32, 4.0, interpreter=False)  # decoding: 4 pairs per expert
    assert small and all(c["BLOCK_M"] == 16 for c in small)
    assert configs.default_config(32, 4096.0, interpreter=False)["BLOCK_M"] == 128
    assert not configs.default_config(32, 4096.0, interpreter=False)["FUSED"]


def test_cache_path_is_per_device(cache_dir):
    assert configs.cache_path("NVIDIA H100 80GB HBM3") == cache_dir / "NVIDIA_H100_80GB_HBM3.json"


def test_pick_config_times_once_then_reads_the_cache(cache_dir):
    cands = [dict(BLOCK_M=16), dict(BLOCK_M=64), dict(BLOCK_M=128)]
    fake_ms = {16: 3.0, 64: 1.0, 128: 2.0}
    calls = []

    def run(cfg):
        calls.append(cfg["BLOCK_M"])

    def timer(fn):
        fn()
        return fake_ms[calls[-1]]

    kw = dict(device_name="Fake GPU", version="3.9.0", timer=timer)
    assert configs.pick_config("moe:key", cands, run, **kw) == dict(BLOCK_M=64)
    assert sorted(calls) == [16, 64, 128]
    saved = json.loads((cache_dir / "Fake_GPU.json").read_text())
    assert saved == {"triton": "3.9.0", "configs": {"moe:key": {"BLOCK_M": 64}}}
    calls.clear()
    assert configs.pick_config("moe:key", cands, run, **kw) == dict(BLOCK_M=64)
    assert calls == []  # in-process memo: nothing timed
    configs._MEMO.clear()  # as in a new process
    assert configs.pick_config("moe:key", cands, run, **kw) == dict(BLOCK_M=64)
    assert calls == []  # read from the JSON file: nothing timed
    # another Triton version ignores the old choices
    configs.pick_config("moe:key", cands, run, **dict(kw, version="4.0.0"))
    assert len(calls) == 3


def test_pick_config_skips_failing_candidates(cache_dir):
    def run(cfg):
        if cfg["BLOCK_M"] == 16:
            raise RuntimeError("out of resources")

    def timer(fn):
        fn()
        return 1.0

    best = configs.pick_config("k", [dict(BLOCK_M=16), dict(BLOCK_M=32)], run, device_name="g", version="v",
                               timer=timer)
    assert best == dict(BLOCK_M=32)
    with pytest.raises(RuntimeError, match="no Triton config"):
        configs.pick_config("k2", [dict(BLOCK_M=16), dict(BLOCK_M=16, x=1)], run, device_name="g",
                            version="v", timer=timer)


def test_corrupt_cache_is_ignored(cache_dir):
    (cache_dir / "g.json").write_text("{not json")
    assert configs.load_cache("g", "v") == {}


def test_autotune_switch(monkeypatch):
    monkeypatch.setenv("PLM_KERNELS_AUTOTUNE", "0")
    assert not configs.autotune_enabled()
    monkeypatch.delenv("PLM_KERNELS_AUTOTUNE")
    assert configs.autotune_enabled()
