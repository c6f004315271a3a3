"""method=peft end to end through the CLI on tiny-bert / SST-2: results.json, the saved adapter, refusals."""

from __future__ import annotations

import json

from tests.conftest import TINY_SST2, run_cli


def results(root) -> tuple[dict, object]:
    files = list(root.rglob("results.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text()), files[0].parent


def test_lora_saves_only_the_adapter_and_its_reload_gives_the_run_metrics(tmp_path, shared_data):
    out = run_cli(*TINY_SST2, "method=peft", "method.peft=lora", f"data_dir={shared_data}",
                  f"paths.output_root={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    r, run_dir = results(tmp_path)
    assert r["status"] == "completed"
    assert r["metrics"]["accuracy"] == r["in_memory"]["accuracy"] == r["merged"]["accuracy"]
    t = r["trainable"]
    assert t["count"] == r["parameters"]["trainable"] and t["total"] == r["parameters"]["total"]
    assert 0 < t["percent"] < 5 and t["percent"] == round(100 * t["count"] / t["total"], 4)
    assert (run_dir / "adapter" / "adapter_config.json").exists() and not (run_dir / "model").exists()
    assert r["saved"]["bytes"] < 4 * t["total"] / 10  # far below the full model's float32 weights


def test_child_tuning_d_keeps_its_fisher_mask_and_reloads_the_full_model(tmp_path, shared_data):
    out = run_cli(*TINY_SST2, "method=peft", "method.peft=child_d", "method.child_p=0.2", "train.max_steps=6",
                  f"data_dir={shared_data}", f"paths.output_root={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    r, run_dir = results(tmp_path)
    assert (run_dir / "child_d_mask.pt").exists() and (run_dir / "model" / "config.json").exists()
    assert abs(r["child_mask_share"] - 0.2) < 0.001
    assert r["metrics"]["accuracy"] == r["in_memory"]["accuracy"] and "merged" not in r
    assert r["trainable"]["count"] == r["trainable"]["total"]


def test_an_option_the_family_cannot_take_is_refused_in_one_line(tmp_path, shared_data):
    args = [a for a in TINY_SST2 if not a.startswith("model=")]
    out = run_cli(*args, "model=tiny-t5", "method=peft", "method.peft=prefix", f"data_dir={shared_data}",
                  f"paths.output_root={tmp_path}")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "method.peft=prefix" in lines[0] and "use lora" in lines[0]
