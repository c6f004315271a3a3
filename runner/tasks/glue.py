"""GLUE from a local folder (GLUE distribution TSV, parquet or jsonl) or the hub.

Source resolution for a split: <data_dir>/glue/<subset>/<split>.{tsv,parquet,jsonl}, also under the GLUE
distribution's stem (dev.tsv for validation, dev_matched.tsv for validation_matched); else the hub
(`nyu-mll/glue`) unless HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set; else a one-line TaskDataError.

TSV is parsed by splitting lines on tabs (csv.QUOTE_NONE semantics): GLUE text contains quote
characters, and words like "null" or "NA" are sentences, so no CSV/pandas parser touches it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.tasks.config import TaskConfig, TaskDataError

HUB_DATASET = "nyu-mll/glue"
FORMATS = ("tsv", "parquet", "jsonl")
# The GLUE distribution names its dev files differently from the hub's split names.
DISTRIBUTION_STEMS = {
    "validation": "dev",
    "validation_matched": "dev_matched",
    "validation_mismatched": "dev_mismatched",
}


@dataclass(frozen=True)
class Columns:
    """Where a subset keeps its columns: output name -> accepted source names (GLUE TSV first, hub second)."""

    text: dict[str, tuple[str, ...]]
    label: tuple[str, ...] = ("label",)
    headerless: tuple[str, ...] | None = None  # column names of a TSV without a header row


GLUE_COLUMNS = {
    # CoLA's GLUE TSV has no header: source, label, original label ("*" marks), sentence.
    "cola": Columns({"sentence": ("sentence",)}, headerless=("source", "label", "original_label", "sentence")),
    "sst2": Columns({"sentence": ("sentence",)}),
    "mrpc": Columns({"sentence1": ("#1 String", "sentence1"), "sentence2": ("#2 String", "sentence2")},
                    label=("Quality", "label")),
    "qqp": Columns({"question1": ("question1",), "question2": ("question2",)}, label=("is_duplicate", "label")),
    "stsb": Columns({"sentence1": ("sentence1",), "sentence2": ("sentence2",)}, label=("score", "label")),
    "mnli": Columns({"premise": ("sentence1", "premise"), "hypothesis": ("sentence2", "hypothesis")},
                    label=("gold_label", "label")),
    "qnli": Columns({"question": ("question",), "sentence": ("sentence",)}),
    "rte": Columns({"sentence1": ("sentence1",), "sentence2": ("sentence2",)}),
    "wnli": Columns({"sentence1": ("sentence1",), "sentence2": ("sentence2",)}),
}


def hub_offline() -> bool:
    return any(os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
               for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def load_splits(cfg: TaskConfig, data_dir: str | None) -> dict[str, Any]:
    """{train_split: Dataset, eval_split: Dataset} with columns text_fields + "label"."""
    if cfg.subset not in GLUE_COLUMNS:
        raise TaskDataError(f"task {cfg.name}: unknown GLUE subset {cfg.subset!r}; known: {', '.join(GLUE_COLUMNS)}")
    columns = GLUE_COLUMNS[cfg.subset]
    missing = [f for f in cfg.text_fields if f not in columns.text]
    if missing:
        raise TaskDataError(f"task {cfg.name}: text_fields {missing} are not columns of {cfg.subset}; "
                            f"use some of {list(columns.text)}")
    splits = [cfg.train_split, cfg.eval_split]
    folder = Path(data_dir).expanduser() / "glue" / cfg.subset if data_dir else None
    found = {split: find_file(folder, split) for split in splits} if folder else {}
    if any(found.values()):
        absent = [s for s in splits if found[s] is None]
        if absent:
            raise TaskDataError(f"task {cfg.name}: {folder} has no {absent[0]}.{{{','.join(FORMATS)}}}; "
                                f"add it or point data_dir elsewhere (see README)")
        return {split: read_file(cfg, columns, found[split]) for split in splits}
    if hub_offline():
        where = f"no data at {folder}" if folder else "no data_dir given"
        raise TaskDataError(f"task {cfg.name}: {where} and the hub is offline; set data_dir=<folder holding "
                            f"glue/{cfg.subset}/{cfg.train_split}.tsv> (see README)")
    return {split: load_from_hub(cfg, split) for split in splits}


def source_files(cfg: TaskConfig, data_dir: str | None) -> dict[str, Path]:
    """The local files this task reads, by name relative to data_dir; {} when it would use the hub."""
    if not data_dir or cfg.subset not in GLUE_COLUMNS:
        return {}
    root = Path(data_dir).expanduser()
    found = {split: find_file(root / "glue" / cfg.subset, split) for split in (cfg.train_split, cfg.eval_split)}
    return {str(path.relative_to(root)): path for path in found.values() if path is not None}


def find_file(folder: Path, split: str) -> Path | None:
    for stem in (split, DISTRIBUTION_STEMS.get(split)):
        for fmt in FORMATS:
            if stem and (folder / f"{stem}.{fmt}").is_file():
                return folder / f"{stem}.{fmt}"
    return None


def features(cfg: TaskConfig):
    import datasets

    if cfg.is_regression:
        label = datasets.Value("float32")  # float32: MSELoss against float32 logits
    elif cfg.label_names:
        label = datasets.ClassLabel(names=list(cfg.label_names))
    else:
        label = datasets.Value("int64")
    return datasets.Features({**{f: datasets.Value("string") for f in cfg.text_fields}, "label": label})


def read_file(cfg: TaskConfig, columns: Columns, path: Path):
    import datasets

    if path.suffix == ".tsv":
        header, rows = read_tsv(path, columns.headerless)
    elif path.suffix == ".parquet":
        header, rows = read_parquet(path)
    else:
        header, rows = read_jsonl(path)
    if not rows and not header:  # jsonl / parquet without a single record
        raise TaskDataError(f"task {cfg.name}: {path} has no rows; add examples or point data_dir at complete data")
    wanted = [columns.text[out] for out in cfg.text_fields] + [columns.label]
    sources = {out: pick(header, columns.text[out], cfg, path, wanted) for out in cfg.text_fields}
    sources["label"] = pick(header, columns.label, cfg, path, wanted)
    if not rows:
        raise TaskDataError(f"task {cfg.name}: {path} has a header but no rows; add examples (one per line "
                            "below the header) or point data_dir at complete data")
    data: dict[str, list] = {out: [] for out in sources}
    for line, row in rows:
        for out in cfg.text_fields:
            value = row[sources[out]]
            if not isinstance(value, str):
                raise TaskDataError(f"task {cfg.name}: {path} line {line}: {sources[out]} is {value!r}, not text")
            data[out].append(value)
        data["label"].append(parse_label(cfg, row[sources["label"]], path, line))
    return datasets.Dataset.from_dict(data, features=features(cfg))


def pick(header: list[str], names: tuple[str, ...], cfg: TaskConfig, path: Path,
         wanted: list[tuple[str, ...]] = ()) -> int:
    for name in names:
        if name in header:
            return header.index(name)
    if path.suffix == ".tsv" and not any(n in header for accepted in wanted for n in accepted):
        # No expected name at all: the first line is data, not a header.
        expected = "<TAB>".join(accepted[0] for accepted in wanted)
        raise TaskDataError(f"task {cfg.name}: {path} line 1 is not a header (no column "
                            f"{' or '.join(map(repr, names))}); add the header line {expected} as line 1")
    raise TaskDataError(f"task {cfg.name}: {path} line 1: the header {header} has no column "
                        f"{' or '.join(map(repr, names))}; rename that column")


def parse_label(cfg: TaskConfig, value: Any, path: Path, line: int) -> int | float:
    try:
        if cfg.is_regression:
            return float(value)
        if isinstance(value, str) and cfg.label_names and value in cfg.label_names:
            return cfg.label_names.index(value)
        label = int(value)
        if isinstance(value, float) and value != label:
            raise ValueError
    except (TypeError, ValueError):
        expected = "a float" if cfg.is_regression else f"an id or one of {cfg.label_names}"
        raise TaskDataError(f"task {cfg.name}: {path} line {line}: label {value!r} is not {expected}") from None
    if not 0 <= label < cfg.num_labels:
        raise TaskDataError(f"task {cfg.name}: {path} line {line}: label {label} is outside 0..{cfg.num_labels - 1}")
    return label


def read_tsv(path: Path, headerless: tuple[str, ...] | None) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (1-based line number, fields) rows; every row must have the header's column count."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise TaskDataError(f"{path}: not UTF-8 ({error}); re-encode the file") from None
    # split("\n"), never splitlines(): that would also break rows at \x0b, \x1c, \u2028 ... inside text.
    lines = [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line]  # blank lines carry no row
    if not numbered:
        raise TaskDataError(f"{path}: empty file; add a header line and examples or point data_dir at complete data")
    first = numbered[0][1].split("\t")
    # A headerless file (CoLA) is recognised by its first row not naming the known columns.
    if headerless and len(first) == len(headerless) and not set(first) & set(headerless[1:]):
        header, body = list(headerless), numbered
    else:
        header, body = first, numbered[1:]
    rows = []
    for number, line in body:
        fields = line.split("\t")
        if len(fields) != len(header):
            raise TaskDataError(f"{path} line {number}: {len(fields)} tab-separated columns, expected "
                                f"{len(header)} ({', '.join(header)})")
        rows.append((number, fields))
    return header, rows


def read_parquet(path: Path) -> tuple[list[str], list[tuple[int, list[Any]]]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    header = table.column_names
    columns = [table.column(name).to_pylist() for name in header]
    # "line" of a parquet row: its 1-based row number, so errors still point at a row.
    return header, [(i + 1, list(values)) for i, values in enumerate(zip(*columns, strict=True))]


def read_jsonl(path: Path) -> tuple[list[str], list[tuple[int, list[Any]]]]:
    header: list[str] = []
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise TaskDataError(f"{path} line {number}: invalid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise TaskDataError(f"{path} line {number}: expected a JSON object per line")
            if not header:
                header = list(record)
            if set(record) != set(header):
                raise TaskDataError(f"{path} line {number}: keys {sorted(record)} differ from line 1's {sorted(header)}")
            records.append((number, [record[key] for key in header]))
    return header, records


def load_from_hub(cfg: TaskConfig, split: str):
    import datasets

    try:
        dataset = datasets.load_dataset(HUB_DATASET, cfg.subset, split=split)
    except Exception as error:  # network, auth, unknown split: all end in the same fix
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TaskDataError(f"task {cfg.name}: loading {HUB_DATASET}/{cfg.subset} split {split} from the hub "
                            f"failed ({message}); set data_dir=<folder holding glue/{cfg.subset}/> (see README)"
                            ) from error
    return dataset.select_columns([*cfg.text_fields, "label"]).cast(features(cfg))
