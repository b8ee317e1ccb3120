"""Content-addressed step cache of the local runner, and pruning of old runs.

Why: a warm ``mlcicd run`` on an unchanged checkout should not spend minutes
re-running lint, tests and gates that already passed on exactly the same
inputs. A step names its inputs (the checkout's content, the command, the
candidate model's hash, the resolved definition, the champion it was compared
with ...); their sha256 is the key. A step whose key passed before in this
state directory is reported ``cached`` with the hash it matched and the run it
passed in; the files it produced then (gate reports) are restored into this
run's directory, so later steps and the summary read them as if just written.

Only passes are stored: a failure is always re-run. ``--no-cache`` turns the
lookup off (passes are still recorded).

Left out: sharing the cache between machines or state directories, and
eviction by size (entries are a few kilobytes of JSON and gate reports).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CacheHit:
    digest: str
    run_id: str
    files: Path  # where the step's saved outputs are


def inputs_digest(inputs: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for item in inputs:
        digest.update(item.encode() + b"\0")
    return digest.hexdigest()


def source_fingerprint(root: Path) -> str:
    """sha256 over the path and bytes of every file git tracks or would track (not ignored).

    Falls back to a fresh random value when git cannot list the files, so nothing is cached.
    """
    done = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        import uuid

        return uuid.uuid4().hex
    digest = hashlib.sha256()
    for name in sorted(set(done.stdout.decode().split("\0")) - {""}):
        path = root / name
        digest.update(name.encode() + b"\0")
        with contextlib.suppress(OSError):  # listed but deleted in the work tree
            digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


class StepCache:
    """Passed steps by key (stage/step) and inputs digest, under ``root``."""

    def __init__(self, root: Path, enabled: bool = True) -> None:
        self.root = root
        self.enabled = enabled

    def _entry(self, key: str) -> Path:
        return self.root / hashlib.sha256(key.encode()).hexdigest()[:24]

    def lookup(self, key: str, inputs: Sequence[str]) -> CacheHit | None:
        if not self.enabled:
            return None
        entry = self._entry(key)
        try:
            meta = json.loads((entry / "entry.json").read_text())
        except (OSError, ValueError):
            return None
        digest = inputs_digest(inputs)
        if meta.get("digest") != digest:
            return None
        return CacheHit(digest, str(meta.get("run_id", "?")), entry / "files")

    def store(
        self, key: str, inputs: Sequence[str], run_id: str, outputs: Path | None = None
    ) -> None:
        """Record a pass; ``outputs`` (a directory) is saved to be restored on a hit."""
        entry = self._entry(key)
        shutil.rmtree(entry, ignore_errors=True)
        entry.mkdir(parents=True)
        if outputs is not None and outputs.is_dir():
            shutil.copytree(outputs, entry / "files")
        meta = {"key": key, "digest": inputs_digest(inputs), "run_id": run_id}
        (entry / "entry.json").write_text(json.dumps(meta, indent=2) + "\n")

    @staticmethod
    def restore(hit: CacheHit, dest: Path) -> None:
        if hit.files.is_dir():
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(hit.files, dest)

    @staticmethod
    def prune_runs(runs: Path, keep: int) -> list[Path]:
        """Delete all but the newest ``keep`` run directories (names sort by time)."""
        if keep <= 0 or not runs.is_dir():
            return []
        old = sorted(p for p in runs.iterdir() if p.is_dir())[:-keep]
        for path in old:
            shutil.rmtree(path, ignore_errors=True)
        return old
