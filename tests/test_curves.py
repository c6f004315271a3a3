"""The knowledge-inheritance recipe's curve figures and archive (runner/tables/curves.py, `python -m
runner.tables.curves`): mean curves over seeds, the measures recomputed from the curves, archived runs of an
earlier checkout."""

from __future__ import annotations

import pytest

from runner.ki import curve
from runner.tables import curves


def test_summarize_averages_curves_over_seeds_and_recomputes_the_fraction(tmp_path):
    import json

    scratch = [(100, 6.0), (200, 5.0), (300, 4.5), (400, 4.0)]
    for seed, shift in ((1, 0.0), (2, 0.2)):
        run = tmp_path / f"ki/seed{seed}"
        curve.write_csv([{"step": s, "eval_loss": v - 0.4 - shift} for s, v in scratch], run / "curve.csv")
        curve.write_csv([{"step": s, "eval_loss": v} for s, v in scratch], run / "scratch" / "curve.csv")
        config = {"seed": seed, "method": {"name": "ki", "schedule": "linear", "alpha0": 1.0, "inherit_steps": 200}}
        (run / "results.json").write_text(json.dumps({"status": "completed", "config": config}))
    summary = curves.summarize(tmp_path, tmp_path / "tables")
    fractions = sorted(r["steps_fraction"] for r in summary["rows"])
    # seed 1 (-0.4: 4.1 at 300, 3.6 at 400) crosses 4.0 at 320; seed 2 (-0.6: 4.4 at 200, 3.9 at 300) at 280
    assert fractions == pytest.approx([280 / 400, 320 / 400])
    # KD stops at 200: seed 1 at 4.6 (scratch gets there at 280), seed 2 at 4.4 (at 320)
    assert sorted(r["kd_stop_fraction"] for r in summary["rows"]) == pytest.approx([200 / 320, 200 / 280])
    assert curves.mean_curve([[(1, 1.0), (2, 2.0)], [(1, 3.0)]]) == [(1, 2.0)]
    assert (tmp_path / "tables" / "ki-curves.png").exists() and (tmp_path / "tables" / "ki-steps.csv").exists()
    assert all((tmp_path / "tables" / f"ki-curves-seed{seed}.png").exists() for seed in (1, 2))


def test_summarize_keeps_the_archived_runs_of_an_earlier_checkout(tmp_path):
    import json
    import shutil

    scratch = [(100, 6.0), (200, 5.0), (300, 4.5), (400, 4.0)]
    teacher = [(100, 6.5), (400, 5.5)]

    def make_run(root, seed, schedule, shift):
        run = root / f"ki/{schedule}/seed{seed}"
        curve.write_csv([{"step": s, "eval_loss": v - shift} for s, v in scratch], run / "curve.csv")
        curve.write_csv([{"step": s, "eval_loss": v} for s, v in scratch], run / "scratch" / "curve.csv")
        curve.write_csv([{"step": s, "eval_loss": v} for s, v in teacher], run / "teacher" / "curve.csv")
        config = {"seed": seed, "method": {"name": "ki", "schedule": schedule, "alpha0": 1.0, "inherit_steps": 200,
                                           "temperature": 1.0}}
        (run / "results.json").write_text(json.dumps({"status": "completed", "config": config}))

    first, out = tmp_path / "first", tmp_path / "results"
    make_run(first, 2, "linear", 0.4)
    make_run(first, 2, "step", 0.1)
    before = curves.summarize(first, out)["rows"]
    index = (out / "curves" / "index.csv").read_text()
    assert "ki-linear-a0-1.0-t-1.0-seed2.csv" in index and "scratch-seed2.csv" in index and "teacher.csv" in index
    shutil.rmtree(first)  # a new checkout: the runs are gone, the archived curves are committed
    second = tmp_path / "second"
    make_run(second, 1, "linear", 0.2)
    assert {(r["seed"], r["source"]) for r in curves.summarize(second, out)["rows"]} == {(1, "run")}
    rows = curves.summarize(second, out, keep_earlier=True)["rows"]
    assert [(r["schedule"].split(" (")[0], r["seed"], r["source"]) for r in rows] == [
        ("KI linear", 1, "run"), ("KI linear", 2, "earlier"), ("KI step", 2, "earlier")]
    # the earlier runs' measures come out as they did from the runs themselves
    for row in rows[1:]:
        same = next(b for b in before if b["schedule"] == row["schedule"])
        for key in ("steps_fraction", "kd_stop_fraction", "final_loss", "scratch_final_loss"):
            assert row[key] == pytest.approx(same[key])
    assert (out / "ki-curves-seed2.png").exists() and (out / "ki-curves-seed1.png").exists()
    # a run present again replaces its archived copy
    make_run(second, 2, "linear", 0.3)
    rows = curves.summarize(second, out, keep_earlier=True)["rows"]
    linear2 = next(r for r in rows if r["seed"] == 2 and r["schedule"].startswith("KI linear"))
    assert linear2["source"] == "run" and linear2["final_loss"] == pytest.approx(4.0 - 0.3)


def test_cli_writes_the_figures_and_refuses_a_missing_folder(tmp_path, capsys):
    import json

    run = tmp_path / "runs" / "ki" / "seed1"
    points = [(100, 6.0), (200, 5.0)]
    curve.write_csv([{"step": s, "eval_loss": v - 0.5} for s, v in points], run / "curve.csv")
    curve.write_csv([{"step": s, "eval_loss": v} for s, v in points], run / "scratch" / "curve.csv")
    config = {"seed": 1, "method": {"name": "ki", "schedule": "linear", "alpha0": 1.0, "inherit_steps": 100}}
    (run / "results.json").write_text(json.dumps({"status": "completed", "config": config}))
    assert curves.main([str(tmp_path / "runs"), str(tmp_path / "out")]) == 0
    assert "seed 1: steps_fraction" in capsys.readouterr().out
    assert (tmp_path / "out" / "ki-curves.png").exists() and (tmp_path / "out" / "curves" / "index.csv").exists()
    with pytest.raises(SystemExit) as exit_info:
        curves.main([str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2 and "no such folder" in capsys.readouterr().err
