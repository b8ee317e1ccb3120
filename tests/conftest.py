"""Shared fixtures (service fixtures live in tests/fixtures/, one module per service), and
the ``gpu`` marker's skip: a test marked ``gpu`` is skipped where torch sees no CUDA device."""

from __future__ import annotations

import pytest

pytest_plugins: list[str] = [
    "tests.fixtures.mlflow_server",
    "tests.fixtures.prometheus",
    "tests.fixtures.builtin_model",
    "tests.fixtures.inference_server",
]


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
