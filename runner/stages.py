"""Stage artefacts: each stage writes into <run_dir>/<stage>/ and finishes with done.json (its key and a
small info dict), so a killed or repeated run resumes at the first stage without a matching done.json.

A stage's key is a digest of everything it depends on, including the keys of the stages before it, so a
changed setting recomputes that stage and every later one. Shared stages (the dense and ReLU fine-tunes,
the collected inputs, the split) are also registered in a cache folder under paths.cache_dir, keyed by
that digest: another run needing the same stage (the other cells of a split x router grid, the students of
one teacher) links <its run_dir>/<stage> to the finished one instead of recomputing it. A file lock makes
concurrent runs wait for the one computing it. Each method has its own namespace in the cache
(<cache_dir>/<namespace>/<stage>-<digest>), so two methods' stages of the same name never collide.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DONE = "done.json"


@dataclass
class Stage:
    name: str
    path: Path
    digest: str
    info: dict[str, Any]
    reused: str  # "computed" | "resumed" (done in this run dir before) | "shared" (linked from the cache)


def digest(key: Any) -> str:
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _link(link: Path, target: Path) -> None:
    """A relative symlink, so an output tree moved or copied as a whole (rsync from a cluster) keeps its links."""
    link.symlink_to(os.path.relpath(target, link.parent.resolve()), target_is_directory=True)


def _done(path: Path, key_digest: str) -> dict | None:
    try:
        done = json.loads((path / DONE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return done if done.get("digest") == key_digest else None


class Stages:
    def __init__(self, run_dir: Path, cache_dir: Path | None, log: Callable[[str], None], namespace: str):
        self.run_dir = Path(run_dir)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.log = log
        self.namespace = namespace

    def run(self, name: str, key: Any, build: Callable[[Path], dict], share: bool = False) -> Stage:
        """The finished stage `name` for `key`: from this run dir, from the cache (share=True), or built
        now by build(path) -> info, which writes its artefacts into path."""
        key_digest = digest(key)
        path = self.run_dir / name
        done = _done(path, key_digest)
        if done is not None:
            self.log(f"stage {name}: already done in {path}")
            if share and not path.is_symlink():  # a run killed between done.json and registering it
                self._register(name, key_digest, path)
            return Stage(name, path, key_digest, done["info"], "resumed")
        with self._lock(name, key_digest) if share else contextlib.nullcontext():
            shared = self._shared(name, key_digest) if share else None
            if shared is not None:
                self._clear(path)
                path.parent.mkdir(parents=True, exist_ok=True)
                _link(path, shared)
                self.log(f"stage {name}: reusing {shared} (stage cache)")
                return Stage(name, path, key_digest, _done(shared, key_digest)["info"], "shared")
            if path.is_symlink() or (path / DONE).exists():  # a stale link or a stage of another key
                self._clear(path)
            path.mkdir(parents=True, exist_ok=True)
            self.log(f"stage {name}: computing")
            t0 = time.time()
            info = build(path)
            info["seconds"] = round(time.time() - t0, 1)
            tmp = path / f".{DONE}.tmp"
            tmp.write_text(json.dumps({"stage": name, "digest": key_digest, "key": key, "info": info},
                                      indent=1, default=str))
            os.replace(tmp, path / DONE)
            if share:
                self._register(name, key_digest, path)
        return Stage(name, path, key_digest, info, "computed")

    # -- the cache: <cache_dir>/<namespace>/<stage>-<digest> is a symlink to a finished stage directory

    def _entry(self, name: str, key_digest: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / self.namespace / f"{name}-{key_digest}"

    def _shared(self, name: str, key_digest: str) -> Path | None:
        entry = self._entry(name, key_digest)
        if entry is None or not entry.is_symlink():
            return None
        target = entry.resolve()
        if target == (self.run_dir / name).resolve() or _done(target, key_digest) is None:
            return None
        return target

    def _register(self, name: str, key_digest: str, path: Path) -> None:
        entry = self._entry(name, key_digest)
        if entry is None or (entry.is_symlink() and entry.resolve() == path.resolve()):
            return
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        _link(tmp, path.resolve())
        os.replace(tmp, entry)

    @contextlib.contextmanager
    def _lock(self, name: str, key_digest: str):
        entry = self._entry(name, key_digest)
        if entry is None:
            yield
            return
        entry.parent.mkdir(parents=True, exist_ok=True)
        with open(entry.with_name(f".{entry.name}.lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _clear(self, path: Path) -> None:
        """Unlink a stale link; move a finished stage of another key aside (never delete results)."""
        if path.is_symlink():
            path.unlink()
        elif path.exists():
            aside = path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            shutil.move(path, aside)
            self.log(f"stage {path.name}: kept the previous artefacts as {aside.name}")
