"""The CLI: fast config printing, clear one-line errors, skip of completed runs, force."""

from __future__ import annotations

import json
import time

from tests.conftest import TINY_SST2, run_cli


def test_cfg_job_is_fast_and_does_not_import_torch():
    t0 = time.perf_counter()
    out = run_cli("--cfg", "job", module="runner", env={"PYTHONPROFILEIMPORTTIME": "1"})
    elapsed = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr
    assert "model:" in out.stdout and "method:" in out.stdout
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time")}
    assert "torch" not in imported and "transformers" not in imported
    assert elapsed < 3.0


def test_help_lists_groups_without_torch():
    out = run_cli("--help", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert out.returncode == 0
    for group in ("model:", "method:", "task/glue:", "hardware:"):
        assert group in out.stdout
    assert "finetune" in out.stdout and "tiny-bert" in out.stdout
    assert "| torch\n" not in out.stderr


def test_unknown_method_lists_the_available_ones():
    out = run_cli("method=nope")
    assert out.returncode != 0
    assert "finetune" in out.stderr


def test_unknown_key_is_one_clear_line(tmp_path):
    out = run_cli("+method.foo=1", f"paths.output_root={tmp_path}")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("error: unknown key method.foo; valid keys: name,")
    assert not list(tmp_path.rglob("results.json"))


def test_missing_data_names_the_fix(tmp_path):
    out = run_cli("task=glue/sst2", f"data_dir={tmp_path}/nothing", "model=tiny-bert", f"paths.output_root={tmp_path}")
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "data_dir" in last
    assert not list(tmp_path.rglob("results.json")) and not list(tmp_path.rglob("run.log"))  # nothing left


def test_completed_run_is_skipped_fast_and_force_keeps_the_old_results(tmp_path, shared_data):
    args = [*TINY_SST2, f"data_dir={shared_data}", f"paths.output_root={tmp_path}"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    results_file = next(tmp_path.rglob("results.json"))
    before = results_file.read_text()
    t0 = time.perf_counter()
    again = run_cli(*args)
    assert time.perf_counter() - t0 < 3.0
    assert again.returncode == 0 and "skipped: already completed" in again.stdout
    assert str(results_file) in again.stdout
    assert results_file.read_text() == before
    forced = run_cli(*args, "force=true")
    assert forced.returncode == 0, forced.stderr
    kept = list(results_file.parent.glob("results.json.*"))
    assert len(kept) == 1 and kept[0].read_text() == before
    assert json.loads(results_file.read_text())["status"] == "completed"


def test_same_dir_with_different_config_is_refused(tmp_path, shared_data):
    args = [*TINY_SST2, f"data_dir={shared_data}", f"paths.output_root={tmp_path}"]
    assert run_cli(*args).returncode == 0
    results_file = next(tmp_path.rglob("results.json"))
    data = json.loads(results_file.read_text())
    data["fingerprint"] = "0" * 16
    data["config"]["train"]["lr"] = 0.5
    results_file.write_text(json.dumps(data))
    out = run_cli(*args)
    assert out.returncode == 2
    assert "different config" in out.stderr and "train.lr" in out.stderr and "force=true" in out.stderr
