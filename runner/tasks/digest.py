"""The content of a task's data as part of a run's identity.

A run directory's name says nothing of data_dir (runs stay portable across machines), so the files a
task reads are digested instead: each file's name relative to its root (data_dir, or the packaged corpus
folder), its size and a SHA-256 of its bytes. results.json records the digest; re-running into a
completed run directory with other data content is refused like any other config change.

Hashes are cached by (absolute path, size, mtime) in <cache_dir>/data-digests.json, so checking a
completed run stays cheap for big files and for the ~2,200 BBC files. Light to import: no datasets, torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from runner.tasks.config import TaskConfig

CACHE_FILE = "data-digests.json"
CHUNK = 1 << 20


def task_files(cfg: TaskConfig, data_dir: str | None) -> dict[str, Path]:
    """The files the task's loader reads, by portable name; {} when it reads none locally (the hub)."""
    from runner.tasks import corpora, glue

    if cfg.loader == "glue":
        return glue.source_files(cfg, data_dir)
    if cfg.loader == "bbc":
        return corpora.bbc_files()
    return corpora.text_files(cfg, data_dir)


def file_hash(path: Path, cache: dict[str, Any]) -> tuple[int, str]:
    """(size, SHA-256 of the bytes), reused from `cache` while the file's size and mtime are unchanged."""
    stat = path.stat()
    key, seen = os.path.abspath(path), [stat.st_size, stat.st_mtime_ns]
    entry = cache.get(key)
    if not (isinstance(entry, list) and entry[:2] == seen):  # one entry per path: a changed file replaces it
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
        cache[key] = entry = [*seen, digest.hexdigest()]
    return entry[0], entry[2]


def data_digest(cfg: TaskConfig, data_dir: str | None, cache_dir: str | None = None) -> dict[str, Any] | None:
    """{"digest", "files", "bytes"} of the task's data; None when it reads no local file."""
    files = task_files(cfg, data_dir)
    if not files:
        return None
    cache_file = Path(cache_dir).expanduser() / CACHE_FILE if cache_dir else None
    cache = _read_cache(cache_file)
    before = dict(cache)
    total = hashlib.sha256()
    size = 0
    for name in sorted(files):
        length, digest = file_hash(files[name], cache)
        size += length
        total.update(f"{name}\0{length}\0{digest}\n".encode())
    if cache_file is not None and cache != before:
        _write_cache(cache_file, cache)
    return {"digest": total.hexdigest()[:16], "files": len(files), "bytes": size}


def _read_cache(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # a cache only: rebuilt when unreadable
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, cache: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache dir costs only speed


def differs(recorded: dict[str, Any] | None, current: dict[str, Any] | None) -> bool:
    """True when both digests are known and differ (a run recorded before digests existed, or data that
    cannot be found now, is not a difference: the loader reports missing data itself)."""
    return bool(recorded and current and recorded.get("digest") != current.get("digest"))


def for_config(config: dict[str, Any]) -> dict[str, Any] | None:
    """The data digest for a resolved run config (dict); None when the task config is not valid yet (the
    config checks report that) or the task reads no local file."""
    try:
        task = TaskConfig.from_cfg(config.get("task") or {})
    except (ValueError, TypeError):
        return None
    cache_dir = (config.get("paths") or {}).get("cache_dir")
    data_dir = config.get("data_dir")
    return data_digest(task, data_dir if isinstance(data_dir, str) else None, cache_dir)
