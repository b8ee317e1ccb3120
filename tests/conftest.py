"""Shared fixtures. Service fixtures live in tests/fixtures/, one module per service."""

from __future__ import annotations

pytest_plugins: list[str] = [
    "tests.fixtures.mlflow_server",
    "tests.fixtures.prometheus",
    "tests.fixtures.builtin_model",
    "tests.fixtures.inference_server",
]
