"""Console output and the run report of the local pipeline.

Why its own module: the runner's logic should read as the pipeline, not as
print statements. Every step prints one line when it starts and one when it
ends (with its duration), so a long run always shows where it is; the full
output of each command goes to a log file whose path is printed on failure,
with its last lines.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, TextIO

Status = Literal["passed", "failed", "skipped", "inconclusive"]
_MARK = {"passed": "ok", "failed": "FAIL", "skipped": "skip", "inconclusive": "??"}


@dataclass
class StepRecord:
    stage: str
    name: str
    status: Status
    seconds: float
    detail: str = ""
    log: str | None = None


@dataclass
class RunReport:
    run_id: str
    profile: str
    candidate: str
    git_sha: str
    steps: list[StepRecord] = field(default_factory=list)
    outcome: str = "running"
    facts: dict[str, str] = field(default_factory=dict)

    def write(self, run_dir: Path) -> Path:
        (run_dir / "run.json").write_text(json.dumps(asdict(self), indent=2) + "\n")
        lines = [
            f"# Pipeline run {self.run_id}",
            "",
            f"- outcome: **{self.outcome}**",
            f"- profile: {self.profile}; candidate: {self.candidate}; git sha: {self.git_sha}",
            *(f"- {key}: {value}" for key, value in self.facts.items()),
            "",
            "| stage | step | status | seconds | detail |",
            "|---|---|---|---:|---|",
            *(
                f"| {s.stage} | {s.name} | {s.status} | {s.seconds:.1f} | {s.detail} |"
                for s in self.steps
            ),
        ]
        path = run_dir / "summary.md"
        path.write_text("\n".join(lines) + "\n")
        return path


class Console:
    """Short, line-oriented progress on stderr (stdout stays free for results)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._started = time.monotonic()

    def _elapsed(self) -> str:
        seconds = int(time.monotonic() - self._started)
        return f"{seconds // 60:02d}:{seconds % 60:02d}"

    def stage(self, index: int, total: int, stage_id: str, title: str) -> None:
        self.stream.write(f"\n[{self._elapsed()}] stage {index}/{total} {stage_id}: {title}\n")
        self.stream.flush()

    def start(self, name: str) -> None:
        self.stream.write(f"[{self._elapsed()}]   .. {name}\n")
        self.stream.flush()

    def done(self, record: StepRecord) -> None:
        detail = f" - {record.detail}" if record.detail else ""
        self.stream.write(
            f"[{self._elapsed()}]   {_MARK[record.status]:>4} {record.name} "
            f"({record.seconds:.1f}s){detail}\n"
        )
        self.stream.flush()

    def info(self, text: str) -> None:
        self.stream.write(f"[{self._elapsed()}]        {text}\n")
        self.stream.flush()

    def failure_log(self, log: Path, lines: int = 25) -> None:
        if not log.exists():
            return
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        self.stream.write(f"        --- last {len(tail)} lines of {log} ---\n")
        for line in tail:
            self.stream.write(f"        | {line}\n")
        self.stream.flush()
