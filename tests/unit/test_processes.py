"""A managed process's log lands in the log folder whatever its name holds.

The benchmark names a server after its model, and the int8 candidate's model is a
path: its log must be one file in the folder, not a path under it (that raised
FileNotFoundError and ended `mlcicd bench --quantize int8` before any cell).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pipeline.processes import ManagedProcess, log_file_name


def test_a_name_with_a_path_gives_one_log_file_in_the_folder(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    process = ManagedProcess(
        "ours-/root/.cache/mlcicd/candidates/gpt2-int8",
        [sys.executable, "-c", "print('served')"],
        logs,
    )
    deadline = time.monotonic() + 20
    while process.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.stop()
    assert process.log_path.parent == logs
    assert process.log_path.name == "ours-_root_.cache_mlcicd_candidates_gpt2-int8.log"
    assert "served" in process.log_path.read_text()


def test_plain_names_keep_their_spelling() -> None:
    assert log_file_name("ours-builtin") == "ours-builtin.log"
    assert log_file_name("naive-gpt2-small-random") == "naive-gpt2-small-random.log"
