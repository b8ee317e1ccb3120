"""Shared fixtures (service fixtures live in tests/fixtures/, one module per service), and
the ``gpu`` marker's skip: a test marked ``gpu`` is skipped where torch sees no CUDA device."""

from __future__ import annotations

import os
from typing import Any

import pytest

pytest_plugins: list[str] = [
    "tests.fixtures.mlflow_server",
    "tests.fixtures.prometheus",
    "tests.fixtures.builtin_model",
    "tests.fixtures.inference_server",
]

# Below this many cores, `-n auto` runs in one process. Measured on 2 shared cores:
# tests/infra 25 s in one process, 65 s with 2 workers; tests/unit 58 s vs 95 s. Each
# worker imports torch and builds its own session fixtures (the Pulumi recordings),
# which costs more than a second core gives back.
MIN_CORES_FOR_WORKERS = 4


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    cores = len(os.sched_getaffinity(0))
    return cores if cores >= MIN_CORES_FOR_WORKERS else 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; torch.cuda.is_available() is False")
    for item in marked:
        item.add_marker(skip)


# A test whose call takes longer than this without the ``slow`` mark is named at the
# end of the run, so `-m "not slow"` stays the fast tier. Only the call counts: a
# session fixture's start-up is paid by whichever test comes first. The mark is read
# from the item (as `-m` reads it) and carried in the report, which pytest-xdist
# forwards from its workers.
UNMARKED_SLOW_CALL_S = 5.0
_unmarked_slow: list[tuple[str, float]] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    report.user_properties.append(("marked_slow", item.get_closest_marker("slow") is not None))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    marked = dict(report.user_properties).get("marked_slow", False)
    if report.when == "call" and report.duration > UNMARKED_SLOW_CALL_S and not marked:
        _unmarked_slow.append((report.nodeid, report.duration))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _unmarked_slow:
        return
    terminalreporter.section(f"calls over {UNMARKED_SLOW_CALL_S:.0f} s without the slow mark")
    for nodeid, duration in sorted(_unmarked_slow, key=lambda item: -item[1]):
        terminalreporter.write_line(f"{duration:6.1f} s  {nodeid}")
