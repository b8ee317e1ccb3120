"""Console output and the run report of the local pipeline.

Why its own module: the runner's logic should read as the pipeline, not as
print statements. Every step prints one line when it starts and one when it
ends (with its duration), and a heartbeat line every 15 s while it runs, so a
long run always shows where it is. The full output of each command goes to a
log file; a step that fails or is inconclusive prints the one line that says
why (its measurement against its limit) and where its log is, or, when it has
no such line, the last lines of the log.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, TextIO

Status = Literal["passed", "failed", "skipped", "inconclusive", "interrupted", "cached"]
_MARK = {
    "passed": "ok",
    "failed": "FAIL",
    "skipped": "skip",
    "inconclusive": "??",
    "interrupted": "INT",
    "cached": "cached",
}
HEARTBEAT_S = 15.0


@dataclass
class StepRecord:
    stage: str
    name: str
    status: Status
    seconds: float
    detail: str = ""
    log: str | None = None
    why: str = ""  # one readable line when the step did not pass


@dataclass
class RunReport:
    run_id: str
    profile: str
    candidate: str
    git_sha: str
    steps: list[StepRecord] = field(default_factory=list)
    outcome: str = "running"
    facts: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    not_run: list[str] = field(default_factory=list)  # stages never reached

    def write(self, run_dir: Path) -> Path:
        """run.json and summary.md; paths in the summary are relative to the run directory."""
        (run_dir / "run.json").write_text(json.dumps(asdict(self), indent=2) + "\n")
        lines = [
            f"# Pipeline run {self.run_id}",
            "",
            f"- outcome: **{self.outcome}**",
            f"- total time: {_duration(self.seconds)}",
            f"- profile: {self.profile}; candidate: {self.candidate}; git sha: {self.git_sha}",
            *(f"- {key}: {value}" for key, value in self.facts.items()),
            f"- stages not run: {', '.join(self.not_run) or 'none'}",
            "",
            "| stage | step | status | seconds | detail | log |",
            "|---|---|---|---:|---|---|",
            *(
                f"| {s.stage} | {s.name} | {s.status} | {s.seconds:.1f} | "
                f"{_relative(s.why or s.detail, run_dir)} | {_link(s.log, run_dir)} |"
                for s in self.steps
            ),
        ]
        path = run_dir / "summary.md"
        path.write_text("\n".join(lines) + "\n")
        return path


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m {rest:02d}s" if minutes else f"{rest}s"


def _relative(text: str, run_dir: Path) -> str:
    return text.replace(f"{run_dir}/", "").replace("|", "\\|")


def _link(log: str | None, run_dir: Path) -> str:
    if not log:
        return ""
    rel = os.path.relpath(log, run_dir)
    return f"[{Path(log).name}]({rel})"


class Console:
    """Short, line-oriented progress on stderr (stdout stays free for results)."""

    def __init__(self, stream: TextIO | None = None, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.stream = stream or sys.stderr
        self.heartbeat_s = heartbeat_s
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def elapsed_s(self) -> float:
        return time.monotonic() - self._started

    def _write(self, text: str) -> None:
        with self._lock:
            self.stream.write(text)
            self.stream.flush()

    @contextlib.contextmanager
    def heartbeat(self, name: str, started: float) -> Iterator[None]:
        """Print ``still running <name> (45s)`` every ``heartbeat_s`` until the block ends."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_s):
                self.info(f"still running: {name} ({time.monotonic() - started:.0f}s)")

        thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def why(self, record: StepRecord, run_dir: Path) -> None:
        """The one line that says why a step did not pass, and where its log is."""
        if not record.why and record.log:
            self.failure_log(Path(record.log))
            return
        if record.why:
            self._write(f"        why: {record.why}\n")
        if record.log:
            self._write(f"        log: {record.log}\n")

    def error(self, text: str) -> None:
        self._write(f"{text}\n")

    def _elapsed(self) -> str:
        seconds = int(time.monotonic() - self._started)
        return f"{seconds // 60:02d}:{seconds % 60:02d}"

    def stage(self, index: int, total: int, stage_id: str, title: str) -> None:
        self._write(f"\n[{self._elapsed()}] stage {index}/{total} {stage_id}: {title}\n")

    def start(self, name: str) -> None:
        self._write(f"[{self._elapsed()}]   .. {name}\n")

    def done(self, record: StepRecord) -> None:
        detail = f" - {record.detail}" if record.detail else ""
        self._write(
            f"[{self._elapsed()}]   {_MARK[record.status]:>4} {record.name} "
            f"({record.seconds:.1f}s){detail}\n"
        )

    def info(self, text: str) -> None:
        self._write(f"[{self._elapsed()}]        {text}\n")

    def failure_log(self, log: Path, lines: int = 8) -> None:
        if not log.exists():
            return
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        text = "".join(f"        | {line}\n" for line in tail)
        self._write(f"        --- last {len(tail)} lines of {log} ---\n{text}")
