"""The run directory contract's pieces: tags, fingerprints, atomic writes, archive."""

from __future__ import annotations

import json

from runner.results import RunDir, diff_keys, fingerprint, write_json_atomic


def test_fingerprint_ignores_where_and_how_it_runs():
    a = {"model": {"name": "m"}, "train": {"lr": 1, "dataloader_workers": 0}, "hardware": {"name": "cpu"}}
    b = {"model": {"name": "m"}, "train": {"lr": 1, "dataloader_workers": 4}, "hardware": {"name": "gpu"}}
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint({**a, "train": {"lr": 2}})
    assert diff_keys(a, {**a, "train": {"lr": 2, "dataloader_workers": 0}}) == ["train.lr"]


def test_atomic_write_leaves_no_temp_files(tmp_path):
    write_json_atomic(tmp_path / "results.json", {"status": "running"})
    write_json_atomic(tmp_path / "results.json", {"status": "completed"})
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "completed"


def test_run_dir_lifecycle_and_archive(tmp_path):
    rd = RunDir(tmp_path / "run")
    assert rd.status is None
    rd.start({"seed": 1}, ["seed=1"])
    assert RunDir(rd.path).status == "running"
    rd.finish("completed", metrics={"accuracy": 0.5})
    saved = RunDir(rd.path).results
    assert saved["status"] == "completed" and saved["metrics"] == {"accuracy": 0.5}
    assert saved["wall_time_s"] >= 0 and saved["versions"]["torch"] and saved["attempts"] == 1
    (rd.path / "checkpoints").mkdir()
    moved = RunDir(rd.path).archive()
    assert {p.name.split(".")[0] for p in moved} == {"results", "checkpoints"}
    assert not (rd.path / "results.json").exists()
