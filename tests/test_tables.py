"""Paper tables (runner/tables): aggregation over seeds, expected.csv join, Δ/flags, relative rows, files."""

from __future__ import annotations

import csv
import json
import shlex
import statistics
from pathlib import Path

import pytest

from runner.errors import UserError
from runner.tables import make_table
from runner.tables.__main__ import main as cli_main
from runner.tables.collect import MISSING, collect, lookup
from runner.tables.expected import read_expected
from runner.tables.table import recipe_roots
from tests.conftest import ROOT, compose, run_cli

HEADER = "label,task.name,model.name,method.name,metric,value,scale,tolerance,relative_to,source,command"


def write_run(root: Path, seed: int, metrics: dict | None = None, status: str = "completed", task: str = "glue/sst2",
              model: str = "minilm", method: str = "finetune", lr: float = 5e-5, tag: str = "default",
              method_keys: dict | None = None, **fields) -> Path:
    """A results.json shaped like runner/results.py writes it, in the deterministic directory layout."""
    run_dir = root / method / task / model / tag / f"seed{seed}"
    run_dir.mkdir(parents=True)
    config = {"model": {"name": model}, "method": {"name": method, **(method_keys or {})},
              "task": {"name": task, "main_metric": "pearson" if task == "glue/stsb" else "accuracy"},
              "train": {"lr": lr, "epochs": 1}, "hardware": {"name": "cpu"}, "logger": {"name": "none"},
              "paths": {"output_root": str(root)}, "seed": seed, "data_dir": "/data", "force": False}
    results = {"status": status, "config": config, "run_dir": str(run_dir), "metrics": metrics or {}, **fields}
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def recipe(tmp_path: Path, rows: list[str], header: str = HEADER, checked: bool = True) -> Path:
    """A recipe folder with this expected.csv. checked: every paper value counts as verified in the paper's text
    and comparable (columns verified=yes, comparable=yes appended), so that the row gets an ok/off flag."""
    folder = tmp_path / "recipe"
    folder.mkdir(parents=True)
    if checked and "verified" not in header.split(","):
        width = len(header.split(","))
        header += ",verified,comparable"
        rows = [row + "," * (width - 1 - len(next(csv.reader([row]))) + 1) + ",yes,yes" for row in rows]
    (folder / "expected.csv").write_text("\n".join([header, *rows]) + "\n")
    return folder


def test_lookup_dotted_paths_with_dotted_keys():
    data = {"metrics": {"accuracy": 0.9}, "ratios": {"0.25": {"accuracy": 0.8}, "0.5": {"accuracy": 0.85}},
            "layers": [{"kept": 3}, {"kept": 4}]}
    assert lookup(data, "metrics.accuracy") == 0.9
    assert lookup(data, "ratios.0.25.accuracy") == 0.8
    assert lookup(data, "layers.1.kept") == 4
    assert lookup(data, "ratios.0.75.accuracy") is MISSING and lookup(data, "layers.5") is MISSING


def test_mean_sample_std_and_n_over_seeds(tmp_path):
    runs = tmp_path / "runs"
    accs = [0.90, 0.92, 0.97]
    for seed, acc in enumerate(accs, 1):
        write_run(runs, seed, {"accuracy": acc})
    write_run(runs, 1, {"pearson": 0.8}, task="glue/stsb")
    folder = recipe(tmp_path, ["SST-2,glue/sst2,minilm,finetune,accuracy,91.0,,,,paper T1,",
                               "STS-B,glue/stsb,minilm,finetune,pearson,,,,,,"])
    table = make_table(folder, runs=[runs], write=False)
    sst2, stsb = table.lines
    assert sst2.n == 3 and sst2.seeds == [1, 2, 3]
    assert sst2.mean == pytest.approx(100 * statistics.fmean(accs))
    assert sst2.std == pytest.approx(100 * statistics.stdev(accs))  # sample std (n - 1), in paper units
    assert sst2.scale == 100 and sst2.delta == pytest.approx(sst2.mean - 91.0)
    assert stsb.n == 1 and stsb.std is None and stsb.mean == pytest.approx(80.0)
    assert stsb.status == "no paper value"
    assert "93.00 ± 3.61" in table.markdown and "| 3 |" in table.markdown


def test_delta_and_tolerance_flags(tmp_path):
    runs = tmp_path / "runs"
    for seed, acc in [(1, 0.90), (2, 0.92)]:
        write_run(runs, seed, {"accuracy": acc})
    folder = recipe(tmp_path, ["close,glue/sst2,,,accuracy,90.5,,1.0,,,",
                               "far,glue/sst2,,,accuracy,93.5,,1.0,,,",
                               "raw units,glue/sst2,,,accuracy,0.90,1,0.005,,,"])
    close, far, raw = make_table(folder, runs=[runs], write=False).lines
    assert close.delta == pytest.approx(0.5) and close.status == "ok" and not close.flagged
    assert far.delta == pytest.approx(-2.5) and far.status == "off" and far.flagged
    assert raw.scale == 1 and raw.mean == pytest.approx(0.91) and raw.status == "off"


def test_missing_cell_shows_the_command_that_fills_it(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, 1, {"accuracy": 0.9})
    folder = recipe(tmp_path, [
        "STS-B,glue/stsb,minilm,finetune,pearson,88.0,,1.0,,,+experiment=finetune/stsb data_dir=../shared/data",
        "MRPC,glue/mrpc,minilm,,accuracy,85.0,,1.0,,,"])
    table = make_table(folder, runs=[runs], write=False)
    stsb, mrpc = table.lines
    assert stsb.status == mrpc.status == "missing" and stsb.mean is None
    assert "missing: `python -m runner -m +experiment=finetune/stsb data_dir=../shared/data`" in table.markdown
    assert mrpc.command == "python -m runner -m task=glue/mrpc model=minilm"  # settings -> group overrides
    assert table.problems == [stsb, mrpc]
    # The SST-2 run matches no row: it is still listed, under the table.
    assert "Settings found but not in expected.csv" in table.markdown and table.others[0].n == 1
    # A row whose runs exist but whose metric path finds nothing says so (not "missing").
    typo = recipe(tmp_path / "typo", ["typo,glue/sst2,minilm,,ratios.0.5.accuracy,85.0,,1.0,,,"])
    table = make_table(typo, runs=[runs], write=False)
    assert table.lines[0].status == "metric not found" and "**metric not found**" in table.markdown
    # ... and a metric every run writes as null (a measure without a value) is told apart from a typo
    nulls = tmp_path / "nulls"
    write_run(nulls, 1, {"accuracy": 0.9, "steps_fraction": None})
    table = make_table(recipe(tmp_path / "null", ["never,glue/sst2,minilm,,steps_fraction,,,,,,"]), runs=[nulls],
                       write=False)
    assert table.lines[0].status == "null" and "null in every run" in table.markdown


def test_failed_and_running_runs_are_excluded_and_counted(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, 1, {"accuracy": 0.9})
    write_run(runs, 2, {"accuracy": 0.1}, status="failed", error="RuntimeError: out of memory")
    write_run(runs, 3, status="running")
    (runs / "broken").mkdir()
    (runs / "broken" / "results.json").write_text("{not json")
    folder = recipe(tmp_path, ["SST-2,glue/sst2,,,accuracy,90.0,,1.0,,,"])
    table = make_table(folder, runs=[runs], write=False)
    (line,) = table.lines
    assert line.n == 1 and line.mean == pytest.approx(90.0)
    assert (line.failed, line.running) == (1, 1)
    assert table.found.counts == {"completed": 1, "failed": 1, "running": 1, "unreadable": 1}
    assert "excluded: 1 failed, 1 running, 1 unreadable" in table.markdown
    assert "(1 failed, 1 running, excluded)" in table.markdown and "out of memory" in table.markdown


def test_relative_rows_use_our_own_reference_run_per_seed(tmp_path):
    runs = tmp_path / "runs"
    dense = {1: 0.90, 2: 0.80}
    sparse = {1: 0.81, 2: 0.76}  # 90% and 95% of the dense run of the same seed
    for seed in (1, 2):
        write_run(runs, seed, {"accuracy": dense[seed]}, model="bert-base")
        write_run(runs, seed, {"accuracy": dense[seed]}, model="bert-base", method="moefication",
                  method_keys={"ratio": 0.2}, ratios={"0.2": {"accuracy": sparse[seed]}})
    header = "label,task.name,model.name,method.name,method.ratio,metric,value,tolerance,relative_to"
    folder = recipe(tmp_path, [
        "other setting,glue/sst2,bert-base,moefication,0.2,ratios.0.2.accuracy,97.0,1.0,"
        "method.name=finetune;method.ratio=;metric=accuracy",
        "same runs,glue/sst2,bert-base,moefication,0.2,ratios.0.2.accuracy,97.0,1.0,metric=accuracy",
        "no reference,glue/sst2,bert-base,moefication,0.2,ratios.0.2.accuracy,97.0,1.0,model.name=t5-base"],
        header=header)
    table = make_table(folder, runs=[runs], write=False)
    other, same, none = table.lines
    for line in (other, same):
        assert line.scale == 100 and line.n == 2
        assert line.mean == pytest.approx(92.5) and line.std == pytest.approx(statistics.stdev([90.0, 95.0]))
        assert line.delta == pytest.approx(-4.5) and line.flagged
        assert line.absolute == pytest.approx(0.785)
    assert "finetune/glue/sst2/bert-base" in other.reference
    assert none.status == "no reference" and none.mean is None
    # Reference runs with other seeds than ours: one ratio of the means, no spread.
    write_run(runs, 7, {"accuracy": 0.5}, model="bert-base", task="glue/stsb")
    write_run(runs, 8, {"accuracy": 0.4}, model="bert-base", task="glue/stsb", method="moefication")
    folder = recipe(tmp_path / "b", ["x,glue/stsb,bert-base,moefication,,accuracy,,,method.name=finetune"],
                    header=header)
    (line,) = make_table(folder, runs=[runs], write=False).lines
    assert line.mean == pytest.approx(80.0) and line.std is None and line.n == 1
    assert "% of ref" in table.markdown


def test_several_matching_settings_get_a_line_each(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, 1, {"accuracy": 0.90}, lr=5e-5)
    write_run(runs, 1, {"accuracy": 0.80}, lr=1e-4, tag="train.lr=1e-4", finished_at="2026-01-01T10:00:00")
    # The same setting and seed completed twice (another directory name): it counts once, the later run.
    write_run(runs, 1, {"accuracy": 0.50}, lr=1e-4, tag="train.lr=0.0001", finished_at="2025-01-01T10:00:00")
    folder = recipe(tmp_path, ["SST-2,glue/sst2,,,accuracy,90.0,,1.0,,,"])
    table = make_table(folder, runs=[runs], write=False)
    assert sorted((line.variant, line.mean) for line in table.lines) == [
        ("train.lr=0.0001", pytest.approx(80.0)), ("train.lr=5e-05", pytest.approx(90.0))]
    assert table.found.duplicates == 1 and "| variant |" in table.markdown
    # A row's note is printed once, however many variants matched it.
    noted = recipe(tmp_path / "noted", ["SST-2,glue/sst2,,,accuracy,90.0,,1.0,,,,8k sentences"], header=HEADER + ",note")
    assert make_table(noted, runs=[runs], write=False).markdown.count("- SST-2: 8k sentences") == 1


def test_a_source_path_naming_the_runs_seed_is_one_setting_over_seeds(tmp_path):
    # A downstream fine-tune reads <pretrain run>/seed<N>/model: its seeds are one setting (mean over them),
    # a source from another seed's folder or another run is not.
    runs = tmp_path / "runs"

    def with_source(run_dir: Path, source: str) -> None:
        results = json.loads((run_dir / "results.json").read_text())
        results["config"]["model"]["source"] = source
        (run_dir / "results.json").write_text(json.dumps(results))

    for seed, acc in ((1, 0.70), (2, 0.74)):
        with_source(write_run(runs, seed, {"accuracy": acc}, tag=f"src{seed}"), f"out/ki/seed{seed}/model")
    with_source(write_run(runs, 3, {"accuracy": 0.5}, tag="other"), "out/ki/seed1/model")
    folder = recipe(tmp_path, ["SST-2,glue/sst2,,,accuracy,,,,,,"])
    lines = sorted(make_table(folder, runs=[runs], write=False).lines, key=lambda line: line.n)
    assert [(line.n, line.mean) for line in lines] == [(1, pytest.approx(50.0)), (2, pytest.approx(72.0))]
    assert "seed<seed>" in lines[1].variant and "seed1" in lines[0].variant


def test_csv_latex_and_png_are_written(tmp_path):
    runs = tmp_path / "runs"
    for seed in (1, 2, 3):
        for ratio, acc in [(0.1, 0.80), (0.3, 0.88)]:
            write_run(runs, seed, {"accuracy": acc + seed / 100}, method="moefication",
                      method_keys={"ratio": ratio}, tag=f"method.ratio={ratio}", parameters={"trainable": 1000})
    header = "label,method.ratio,metric,value,tolerance,source,plot,x,x_label,series"
    folder = recipe(tmp_path, [
        "r=0.1,0.1,accuracy,81.0,1.5,Table 2 & Fig. 3,Accuracy vs ratio,0.1,expert ratio,mlp router",
        "r=0.3,0.3,accuracy,92.0,1.5,Table 2 & Fig. 3,Accuracy vs ratio,0.3,expert ratio,mlp router",
        "r=0.5,0.5,accuracy,91.0,1.5,Table 2 & Fig. 3,Accuracy vs ratio,0.5,expert ratio,mlp router",
        "params,0.3,accuracy,,,,Accuracy vs params,parameters.trainable,trainable parameters,"], header=header)
    out = tmp_path / "tables"
    table = make_table(folder, runs=[runs], out=out)
    names = sorted(p.name for p in table.files)
    assert names == ["Accuracy_vs_params.png", "Accuracy_vs_ratio.png", "recipe.csv", "recipe.md", "recipe.tex"]
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(out / "recipe.csv")))
    assert [r["status"] for r in rows] == ["ok", "off", "missing", "no paper value"]
    assert float(rows[0]["mean"]) == pytest.approx(82.0) and rows[0]["n"] == "3" and rows[1]["flag"] == "1"
    assert rows[2]["command"].startswith("python -m runner -m method.ratio=0.5")
    tex = (out / "recipe.tex").read_text()
    assert "\\toprule" in tex and "$82.00 \\pm 1.00$" in tex and "\\textbf{-2.00}" in tex
    assert (out / "recipe.md").read_text() == table.markdown
    assert table.lines[3].x == 1000


def test_expected_csv_errors_name_the_line(tmp_path):
    folder = recipe(tmp_path, ["SST-2,glue/sst2,,,accuracy,ninety,,,,,"])
    with pytest.raises(UserError, match="line 2: value='ninety' is not a number"):
        read_expected(folder / "expected.csv")
    (folder / "expected.csv").write_text("task.name,value\nglue/sst2,1\n")
    with pytest.raises(UserError, match="metric"):
        read_expected(folder / "expected.csv")


def test_recipe_output_roots_and_outputs_folder(tmp_path, monkeypatch):
    folder = tmp_path / "paper"
    folder.mkdir()
    (folder / "table1.yaml").write_text(
        "# @package _global_\npaths:\n  output_root: ${oc.env:PLM_OUTPUT_ROOT,outputs}/paper\n")
    (folder / "table2.yaml").write_text("# @package _global_\ntrain:\n  epochs: 1\n")
    monkeypatch.delenv("PLM_OUTPUT_ROOT", raising=False)
    assert recipe_roots(folder) == [Path("outputs/paper")]
    monkeypatch.setenv("PLM_OUTPUT_ROOT", str(tmp_path / "elsewhere"))
    assert recipe_roots(folder) == [tmp_path / "elsewhere" / "paper"]
    # An outputs folder without expected.csv: one line per setting, its task's main metric.
    runs = tmp_path / "elsewhere" / "paper"
    write_run(runs, 1, {"pearson": 0.5}, task="glue/stsb")
    assert collect([runs]).counts["completed"] == 1
    table = make_table(runs, out=tmp_path / "t")
    assert not table.lines and table.others[0].metric == "pearson" and table.others[0].mean == pytest.approx(50)
    assert "Settings found:" in table.markdown


def recipe_dirs() -> list[Path]:
    return sorted(p.parent for p in (ROOT / "recipes").glob("*/expected.csv"))


@pytest.mark.parametrize("folder", sorted(p for p in (ROOT / "recipes").iterdir() if any(p.glob("*.yaml"))),
                         ids=lambda p: p.name)
def test_recipe_runs_live_apart_from_plain_runs(folder, monkeypatch):
    """A plain `python -m runner method=<m>` run lands in outputs/<m>/...; a recipe's root must not be (or hold)
    such a folder, or its table would count every ad-hoc run of that method as one of its seeds."""
    from runner.registry import METHODS

    monkeypatch.delenv("PLM_OUTPUT_ROOT", raising=False)
    assert recipe_roots(folder) == [Path("outputs/recipes") / folder.name]
    assert "recipes" not in METHODS


@pytest.mark.parametrize("folder", recipe_dirs(), ids=lambda p: p.name)
def test_recipe_expected_rows_name_real_config_keys(folder):
    """Every setting column of a recipe's expected.csv exists in the config its command composes."""
    from omegaconf import OmegaConf

    composed: dict[tuple[str, ...], dict] = {}  # rows of one table share a command: compose it once
    for row in read_expected(folder / "expected.csv"):
        args = shlex.split(row.fill_command().removeprefix("python -m runner -m "))
        # Sweeps (a=1,2) and where-to-run keys are for the launcher, not for composing one config.
        overrides = tuple(a for a in args if not a.startswith(("data_dir=", "seed=", "-"))
                          and ("," not in a.partition("=")[2] or a.partition("=")[2].startswith("[")))
        if overrides not in composed:
            composed[overrides] = OmegaConf.to_container(compose(list(overrides)), resolve=False)
        config = composed[overrides]
        for key in row.settings:
            assert lookup(config, key) is not MISSING, f"{folder.name} line {row.line}: no config key {key}"


def test_tiny_sweep_rendered_end_to_end(tmp_path, shared_data, capsys):
    runs = tmp_path / "runs"
    sweep = run_cli("-m", "model=tiny-bert", "task=glue/sst2", f"data_dir={shared_data}",
                    "task.max_train_samples=64", "task.max_eval_samples=32", "task.max_length=32",
                    "train.epochs=1", "seed=1,2", f"paths.output_root={runs}", "method.save_model=false")
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    folder = recipe(tmp_path, ["tiny SST-2,glue/sst2,tiny-bert,finetune,accuracy,50.0,,50.0,,smoke,",
                               "tiny STS-B,glue/stsb,tiny-bert,finetune,pearson,,,,,,"])
    out = tmp_path / "tables"
    shown = run_cli(str(folder), "--runs", str(runs), "--out", str(out), module="runner.tables", timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "2 completed run(s) in 1 setting(s)" in shown.stdout
    assert "| tiny SST-2 | accuracy ×100 |" in shown.stdout and "| 2 | 50.0 [1] |" in shown.stdout
    assert "missing: `python -m runner -m task=glue/stsb model=tiny-bert method=finetune`" in shown.stdout
    rows = list(csv.DictReader(open(out / "recipe.csv")))
    assert rows[0]["n"] == "2" and rows[0]["seeds"] == "1 2" and 0 <= float(rows[0]["mean"]) <= 100
    assert cli_main([str(folder), "--runs", str(runs), "--no-write", "--check"]) == 1
    assert "check failed: 1 row(s)" in capsys.readouterr().err


def test_counts_print_without_decimals():
    from runner.tables.aggregate import fmt
    assert fmt(8450.0) == "8,450" and fmt(22566146) == "22,566,146" and fmt(12345.6) == "12,346"
    assert fmt(1234.5) == "1234.50" and fmt(82.34) == "82.34" and fmt(None) == ""


def test_curve_y_axis_names_the_metric_not_one_point():
    from types import SimpleNamespace

    from runner.tables.plots import y_metric

    per_ratio = [SimpleNamespace(metric=f"accuracy@{r}") for r in (0.1, 0.25, 1.0)]
    assert y_metric(per_ratio) == "accuracy"
    assert y_metric([SimpleNamespace(metric="pearson")] * 2) == "pearson"
    assert y_metric([SimpleNamespace(metric="f1"), SimpleNamespace(metric="accuracy")]) == "metric"


def test_written_run_dirs_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    from runner.tables.render import shown

    monkeypatch.chdir(tmp_path)
    assert shown(tmp_path.resolve() / "outputs" / "run" / "seed1") == "outputs/run/seed1"
    assert shown("/elsewhere/run/seed1") == "/elsewhere/run/seed1"


def test_points_spanning_two_decades_plot_on_a_log_axis():
    from runner.tables.plots import log_x

    assert log_x([0.037, 0.33, 100.0])  # PEFT: trainable share from 0.04% to 100%
    assert not log_x([3, 5, 10, 20, 50])  # movement pruning: % of weights remaining
    assert not log_x([0.0, 1.0, 100.0]) and not log_x([])


def test_keep_earlier_fills_only_rows_without_runs(tmp_path):
    """A fresh checkout has none of the runs behind a committed table: --keep-earlier keeps the earlier
    numbers of rows that have no run here (marked, Δ against today's paper value) and never overrides runs."""
    old_runs, new_runs, out = tmp_path / "old", tmp_path / "new", tmp_path / "results"
    for seed, acc in [(1, 0.80), (2, 0.84)]:
        write_run(old_runs, seed, {"accuracy": acc})
        write_run(old_runs, seed, {"pearson": 0.70 + seed / 100}, task="glue/stsb")
    rows = ["SST-2,glue/sst2,,,accuracy,85.0,,1.0,,,", "STS-B,glue/stsb,,,pearson,70.0,,,,,"]
    make_table(recipe(tmp_path / "a", rows), runs=[old_runs], out=out)  # the committed table
    write_run(new_runs, 3, {"accuracy": 0.90}, lr=1e-4)  # only SST-2 is run again, on a new machine, at another lr
    folder = recipe(tmp_path / "b", ["SST-2,glue/sst2,,,accuracy,85.0,,1.0,,,", "STS-B,glue/stsb,,,pearson,71.0,,,,,"])
    assert [line.status for line in make_table(folder, runs=[new_runs], out=out, write=False).lines] == \
        ["off", "missing"]
    table = make_table(folder, runs=[new_runs], out=out, keep_earlier=True)
    sst2, stsb = table.lines
    assert sst2.mean == pytest.approx(90.0) and sst2.n == 1 and not sst2.earlier  # another setting: never mixed
    assert stsb.mean == pytest.approx(71.5) and stsb.std == pytest.approx(statistics.stdev([71.0, 72.0]))
    assert stsb.n == 2 and stsb.seeds == ["1", "2"] and stsb.delta == pytest.approx(0.5)  # today's paper value
    assert stsb.status == "no tolerance" and stsb.earlier == str(out / "recipe.csv")
    assert stsb.run_dirs == [str(old_runs / "finetune/glue/stsb/minilm/default" / f"seed{s}") for s in (1, 2)]
    assert "no tolerance · earlier table" in table.markdown and "`--keep-earlier`" in table.markdown
    assert table.problems == [sst2]  # off tolerance; the kept row is not missing any more
    with open(out / "recipe.csv", newline="") as f:  # the rewritten table keeps the mark, and so the numbers
        written = {r["label"]: r for r in csv.DictReader(f)}
    assert written["STS-B"]["earlier"] and float(written["STS-B"]["mean"]) == pytest.approx(71.5)
    again = make_table(folder, runs=[new_runs], out=out, keep_earlier=True, write=False).lines[1]
    assert again.mean == pytest.approx(71.5) and again.n == 2
    (out / "recipe.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not a table CSV"):
        make_table(folder, runs=[new_runs], out=out, keep_earlier=True, write=False)


def test_keep_earlier_adds_the_seeds_of_the_same_setting_not_run_here(tmp_path):
    """A third seed run in a later session joins the committed table's first two (same config fingerprint);
    a seed run here again replaces its earlier value."""
    old_runs, new_runs, out = tmp_path / "old", tmp_path / "new", tmp_path / "results"
    for seed, acc in [(1, 0.80), (2, 0.84)]:
        write_run(old_runs, seed, {"accuracy": acc})
    rows = ["SST-2,glue/sst2,,,accuracy,85.0,,,,,"]
    make_table(recipe(tmp_path / "a", rows), runs=[old_runs], out=out)
    with open(out / "recipe.csv", newline="") as f:
        written = next(csv.DictReader(f))
    assert written["values"] == "1:80.0 2:84.0" and len(written["setting"]) == 16
    write_run(new_runs, 2, {"accuracy": 0.86})
    write_run(new_runs, 3, {"accuracy": 0.90})
    folder = recipe(tmp_path / "b", rows)
    table = make_table(folder, runs=[new_runs], out=out, keep_earlier=True)
    (line,) = table.lines
    assert line.n == 3 and line.seeds == ["1", "2", "3"] and line.earlier_seeds == ["1"]
    assert line.mean == pytest.approx((80 + 86 + 90) / 3) and line.std == pytest.approx(statistics.stdev([80, 86, 90]))
    assert line.delta == pytest.approx((80 + 86 + 90) / 3 - 85)
    assert line.run_dirs[-1].endswith("seed1") and len(line.run_dirs) == 3
    assert "seed 1 from the earlier table" in table.markdown
    again = make_table(folder, runs=[new_runs], out=out, keep_earlier=True, write=False).lines[0]
    assert again.n == 3 and again.mean == pytest.approx(line.mean)  # the rewritten CSV carries all three seeds


def test_keep_earlier_takes_the_seeds_of_a_reproduced_row_under_a_config_that_gained_keys(tmp_path):
    """Code that gains a config key (its default keeping the old behaviour) changes the fingerprint: the
    earlier seeds join only when the seeds run again here reproduce the earlier row to the digit; the merged
    row carries today's fingerprint. A re-run that does not reproduce it takes none of them."""
    old_runs, out = tmp_path / "old", tmp_path / "results"
    for seed, acc in [(1, 0.80), (2, 0.84), (3, 0.82)]:
        write_run(old_runs, seed, {"accuracy": acc})
    rows = ["SST-2,glue/sst2,,,accuracy,85.0,,,,,"]
    make_table(recipe(tmp_path / "a", rows), runs=[old_runs], out=out)
    folder = recipe(tmp_path / "b", rows)
    same, other = tmp_path / "same", tmp_path / "other"
    write_run(same, 1, {"accuracy": 0.80}, method_keys={"new_key": None})  # the new key at its default
    write_run(other, 1, {"accuracy": 0.81}, method_keys={"new_key": None})  # not the same numbers
    (line,) = make_table(folder, runs=[same], out=out, keep_earlier=True, write=False).lines
    with open(out / "recipe.csv", newline="") as f:
        old_key = next(csv.DictReader(f))["setting"]
    assert line.setting_key != old_key and line.n == 3 and line.earlier_seeds == ["2", "3"]
    assert line.mean == pytest.approx(82.0)
    (line,) = make_table(folder, runs=[other], out=out, keep_earlier=True, write=False).lines
    assert line.n == 1 and not line.earlier_seeds and line.mean == pytest.approx(81.0)
