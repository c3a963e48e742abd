"""Run directory layout, atomic stage commits, manifests and fingerprints.

::

    runs/<name>/
      config.yaml                 the resolved config of the run
      summary.json                one entry per finished iteration
      baseline/                   the initial policy's evaluation responses (shared by iterations)
      iter_<k>/<stage>/           one folder per stage: data + manifest.json
      iter_<k>/.<stage>.partial/  finished shards of a stage still running (kept across restarts)
      .lock, .lock.rank<r>        the run lock (iterdpo.pipeline.lock): pid, host, start time

A stage writes into ``.<stage>.tmp`` beside its final folder and renames it into place
only when complete, so a killed stage leaves no half-written output. Its manifest holds a
*key*: a fingerprint of its config sections and inputs. A finished stage whose key matches
is skipped; one whose key differs is an error (the run was started with another config),
never silently reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from iterdpo import errors, failpoints

MANIFEST = "manifest.json"


class StageMismatch(RuntimeError, errors.UserError):
    """A finished stage's output was produced by a different config or input."""


def fingerprint_files(folder: str | Path, names: list[str] | None = None) -> str:
    """sha1 over the files of a folder (contents up to 64 MiB, name and size beyond).

    Hashing a multi-GB checkpoint would take longer than the stage it guards; its
    ``config.json`` and file sizes still tell checkpoints apart in practice.
    """
    folder = Path(folder)
    h = hashlib.sha1()
    files = sorted(p for p in folder.iterdir() if p.is_file()) if names is None else [
        folder / n for n in names if (folder / n).is_file()
    ]
    for p in files:
        h.update(p.name.encode())
        size = p.stat().st_size
        h.update(str(size).encode())
        if size <= 64 << 20:
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def key_of(**parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("iterdpo", "torch", "transformers", "accelerate", "trl", "peft"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def stage(self, iteration: int | None, name: str) -> Path:
        base = self.root if iteration is None else self.root / f"iter_{iteration}"
        return base / name

    def manifest(self, path: Path) -> dict | None:
        f = path / MANIFEST
        return json.loads(f.read_text()) if f.exists() else None

    def done(self, path: Path, key: str) -> bool:
        """True if ``path`` holds a finished stage made with ``key``; raise if made with another."""
        m = self.manifest(path)
        if m is None:
            return False
        if m["key"] != key:
            raise StageMismatch(
                f"{path} was produced with a different config or input (key {m['key']}, now {key}). "
                "Use a new run name, or delete that folder and the ones after it to redo them."
            )
        return True

    def partial(self, path: Path) -> Path:
        """Folder where a running stage keeps finished shards across restarts."""
        p = path.parent / f".{path.name}.partial"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def tmp_path(self, path: Path) -> Path:
        """The temporary folder a stage is written into before it is published as ``path``."""
        return path.parent / f".{path.name}.tmp"

    def commit(self, path: Path, key: str, write: Callable[[Path], dict | None]) -> dict:
        """Run ``write(tmp)`` and atomically publish ``tmp`` as ``path`` with a manifest.

        ``write`` may return a dict of stats (row counts, metrics) stored in the manifest.
        The only commit point of a stage. The temporary folder belongs to the holder of the
        run lock (:mod:`iterdpo.pipeline.lock`): one left behind was left by a killed run and
        is cleared; a finished stage (with a manifest) is never replaced.
        """
        if self.manifest(path) is not None:
            raise StageMismatch(f"{path} has finished already (key {self.manifest(path)['key']}); a finished stage is never replaced")
        tmp = self.tmp_path(path)
        if tmp.exists():  # left by a killed run (the run lock keeps live ones apart)
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        start = time.time()
        failpoints.hit(path, "before_write")
        with failpoints.writing(path, tmp), errors.writing(path):
            stats = write(tmp) or {}
        manifest = {
            "key": key,
            "stage": path.name,
            "stats": stats,
            "wall_seconds": round(time.time() - start, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "versions": versions(),
        }
        with errors.writing(path):
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            _fsync_dir(tmp)
        failpoints.hit(path, "before_commit")
        if path.exists():  # a folder without manifest (checked above): not a finished stage
            shutil.rmtree(path)
        os.replace(tmp, path)
        partial = path.parent / f".{path.name}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        failpoints.hit(path, "after_commit")
        return manifest


def _fsync_dir(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
