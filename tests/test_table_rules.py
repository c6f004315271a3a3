"""Table rules (runner/tables): ok/off only against verified, comparable paper numbers; a null result survives a
rebuild from an earlier table; a recipe without runs here shows its committed table and never rewrites it;
figures draw a line only through a curve; every committed recipe says where its paper numbers stand."""

from __future__ import annotations

import csv
import io
import subprocess
from pathlib import Path

import pytest

from runner.errors import UserError
from runner.tables import make_table
from runner.tables.expected import read_expected
from tests.conftest import ROOT
from tests.test_tables import write_run

HEADER = "label,task.name,metric,value,tolerance,verified,comparable,source,command"


def recipe(folder: Path, rows: list[str], header: str = HEADER) -> Path:
    folder.mkdir(parents=True)
    (folder / "expected.csv").write_text("\n".join([header, *rows]) + "\n")
    return folder


def test_only_verified_comparable_numbers_get_a_flag(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, 1, {"accuracy": 0.80})
    folder = recipe(tmp_path / "r", [
        "checked,glue/sst2,accuracy,90.0,1.0,yes,yes,T1,",
        "unchecked,glue/sst2,accuracy,90.0,1.0,no,yes,a summary,",
        "other task,glue/sst2,accuracy,90.0,1.0,yes,other task: MNLI-m,T3,",
        "ours,glue/sst2,accuracy,,,,,,"])
    table = make_table(folder, runs=[runs], write=False)
    checked, unchecked, other, ours = table.lines
    assert checked.status == "off" and checked.flagged
    assert unchecked.status == "unverified" and not unchecked.flagged
    assert other.status == "not comparable" and not other.flagged
    for line in (unchecked, other):  # the paper number and Δ are still shown, with the reason
        assert line.paper == 90.0 and line.delta == pytest.approx(-10.0)
    assert ours.status == "no paper value"
    assert "no flag: other task: MNLI-m" in table.markdown and "not checked in the paper's text" in table.markdown
    assert table.problems == [checked]  # --check fails only on the flagged row
    tex = make_table(folder, runs=[runs], out=tmp_path / "t").files[2].read_text()
    assert tex.count("\\textbf{") == 1  # only the flagged Δ is bold


def test_a_paper_value_must_say_whether_it_is_comparable(tmp_path):
    folder = recipe(tmp_path / "r", ["x,glue/sst2,accuracy,90.0,1.0,yes,,T1,"])
    with pytest.raises(UserError, match="needs `comparable`"):
        read_expected(folder / "expected.csv")
    (folder / "expected.csv").write_text(HEADER + "\nx,glue/sst2,accuracy,90.0,1.0,maybe,yes,T1,\n")
    with pytest.raises(UserError, match="verified='maybe'"):
        read_expected(folder / "expected.csv")


def test_a_null_result_survives_a_rebuild_from_the_earlier_table(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    for seed in (1, 2):
        write_run(runs, seed, {"loss": 5.0, "steps_fraction": None})
    header = "label,task.name,metric,null_means,command"
    folder = recipe(tmp_path / "r", ["reached,glue/sst2,steps_fraction,never reached,+experiment=x",
                                     "loss,glue/sst2,loss,,+experiment=x"], header)
    first = make_table(folder, runs=[runs], out=out)
    assert first.lines[0].status == "null" and first.lines[0].n == 2 and first.lines[0].mean is None
    assert "| never reached |" in first.markdown
    rows = list(csv.DictReader(open(out / "r.csv")))
    assert rows[0]["status"] == "null" and rows[0]["mean"] == "" and rows[0]["null_means"] == "never reached"
    again = make_table(folder, runs=[tmp_path / "none"], out=out, keep_earlier=True)  # a fresh checkout
    null, loss = again.lines
    assert null.status == "null" and null.earlier and null.mean is None and null.n == 2
    assert loss.mean == pytest.approx(5.0) and loss.earlier
    assert "| never reached |" in again.markdown and "missing" not in again.markdown


def committed_recipe(tmp_path: Path) -> tuple[Path, Path]:
    """A recipe whose results/ holds the table of two settings run elsewhere, and its (empty) runs root here."""
    folder = recipe(tmp_path / "paper", ["SST-2,glue/sst2,accuracy,85.0,1.0,yes,yes,T1,+experiment=paper/sst2",
                                         "STS-B,glue/stsb,pearson,,,,,,+experiment=paper/stsb"])
    (folder / "sst2.yaml").write_text(f"# @package _global_\npaths:\n  output_root: {tmp_path / 'here'}\n")
    elsewhere = tmp_path / "elsewhere"
    for seed, acc in ((1, 0.84), (2, 0.86)):
        write_run(elsewhere, seed, {"accuracy": acc})
        write_run(elsewhere, seed, {"pearson": 0.80}, task="glue/stsb")
    make_table(folder, runs=[elsewhere], out=folder / "results", committed=False)
    return folder, tmp_path / "here"


def test_a_recipe_without_runs_here_shows_its_committed_table(tmp_path):
    folder, here = committed_recipe(tmp_path)
    before = {p.name: p.read_bytes() for p in (folder / "results").iterdir()}
    table = make_table(folder)  # fresh checkout: no run under the recipe's output root
    sst2, stsb = table.lines
    assert sst2.committed and sst2.status == "ok" and sst2.mean == pytest.approx(85.0) and sst2.n == 2
    assert stsb.committed and stsb.mean == pytest.approx(80.0)
    assert "ok · committed [r1]" in table.markdown and "missing" not in table.markdown
    assert "[r1] `python -m runner -m +experiment=paper/sst2`" in table.markdown
    assert all(f.is_relative_to(here) for f in table.files)  # written under the output root only
    assert {p.name: p.read_bytes() for p in (folder / "results").iterdir()} == before
    assert [line.status for line in make_table(folder, write=False, committed=False).lines] == ["missing"] * 2
    # a run made here replaces the committed row it covers; the other row stays committed
    write_run(here, 1, {"accuracy": 0.95}, lr=1e-4)
    sst2, stsb = make_table(folder, write=False).lines
    assert not sst2.committed and sst2.mean == pytest.approx(95.0) and sst2.status == "off"
    assert stsb.committed


def test_make_table_cli_leaves_the_checkout_clean(tmp_path, monkeypatch, capsys):
    """`python -m runner.tables recipes/<paper>` on a checkout without runs writes under the output root only."""
    from runner.tables.__main__ import main

    monkeypatch.setenv("PLM_OUTPUT_ROOT", str(tmp_path))  # the recipe's runs (none) and tables go there
    status = subprocess.run(["git", "status", "--porcelain", "recipes"], cwd=ROOT, capture_output=True, text=True)
    assert main([str(ROOT / "recipes" / "distill")]) == 0
    assert "committed [r1]" in capsys.readouterr().out
    assert (tmp_path / "recipes" / "distill" / "tables" / "distill.md").exists()
    after = subprocess.run(["git", "status", "--porcelain", "recipes"], cwd=ROOT, capture_output=True, text=True)
    assert after.stdout == status.stdout


def test_knowledge_inheritance_committed_table_shows_steps_fraction_never_reached(tmp_path):
    table = make_table(ROOT / "recipes" / "knowledge-inheritance", runs=[tmp_path / "none"], write=False)
    fractions = [line for line in table.lines if line.metric == "steps_fraction"]
    assert fractions and all(line.status == "null" and line.committed for line in fractions)
    assert "| never reached |" in table.markdown and "missing:" not in table.markdown


def test_distill_committed_table_shows_its_numbers(tmp_path):
    table = make_table(ROOT / "recipes" / "distill", runs=[tmp_path / "none"], write=False)
    kd = next(line for line in table.lines if line.label == "SST-2 3L all data: KD")
    assert kd.committed and kd.mean == pytest.approx(85.51, abs=0.01) and kd.n == 3
    assert sum(line.committed for line in table.lines) > 30


def expected_rows(path: Path) -> list[dict[str, str]]:
    text = "".join(ln for ln in path.read_text().splitlines(keepends=True) if not ln.lstrip().startswith("#"))
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*/expected.csv")), ids=lambda p: p.parent.name)
def test_every_paper_number_says_whether_it_was_checked_and_is_comparable(path):
    rows = expected_rows(path)
    assert rows and {"verified", "comparable"} <= set(rows[0])
    for row in (r for r in rows if r["value"]):
        assert row["verified"] in ("yes", "no"), f"{path.parent.name}: {row['label']}: verified?"
        assert row["comparable"], f"{path.parent.name}: {row['label']}: comparable?"


def test_the_known_incomparable_rows_carry_no_flag(tmp_path):
    """Movement pruning's SST-2 against MNLI-m, distillation's CPU speedup against a FLOPs ratio, MoEfication's
    MiniLM against unchecked T5-Large figures: Δ shown, no ok/off."""
    for name, label in (("movement-pruning", "movement, 10% remaining, % of dense"),
                        ("distill", "SST-2 3L: student speedup over the teacher at 32x128"),
                        ("moefication", "param-cluster / MLP @20%, GELU, % of its dense")):
        lines = [line for line in make_table(ROOT / "recipes" / name, runs=[tmp_path / "none"], write=False).lines
                 if line.label == label]
        assert lines and all(line.status in ("unverified", "not comparable") and line.delta is not None
                             for line in lines), name


def test_a_line_joins_points_only_along_a_curve():
    from runner.tables.aggregate import Line
    from runner.tables.plots import is_curve

    def point(**settings):
        return Line(label="x", metric="accuracy", scale=100, settings=settings)

    sweep = [point(**{"method.pruner": "movement", "method.sparsity": s}) for s in ("0.5", "0.9")]
    assert is_curve(sweep)
    assert is_curve([point(a="1"), point(a="1")])  # one run's metrics at several x (expert ratios)
    methods = [point(**{"method.name": "peft", "method.peft": p, "train.lr": lr}) for p, lr in (("ln", "1e-3"),
                                                                                              ("lora", "5e-4"))]
    assert not is_curve(methods) and not is_curve(sweep[:1])


def test_labels_are_spread_apart_and_stay_in_range():
    from runner.tables.labels import spread

    placed = spread([10.0, 11.0, 12.0, 50.0], gap=10.0, low=0.0, high=100.0)
    assert all(b - a >= 10.0 - 1e-9 for a, b in zip(placed, placed[1:], strict=False))
    assert placed[0] <= 11.0 <= placed[2] and placed[3] == 50.0  # the crowd centred on where it wants to be
    top = spread([95.0, 96.0, 97.0], gap=10.0, low=0.0, high=100.0)
    assert max(top) <= 100.0 and top[1] - top[0] == pytest.approx(10.0)
