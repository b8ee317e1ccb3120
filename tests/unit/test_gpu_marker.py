"""The ``gpu`` marker is real: a marked test runs where CUDA is, and is skipped elsewhere
(tests/conftest.py), so GPU checks can live in the suite without failing CPU machines."""

from __future__ import annotations

import pytest


@pytest.mark.gpu
def test_a_gpu_test_runs_only_where_cuda_is_available() -> None:
    import torch

    assert torch.cuda.is_available()
    assert torch.ones(2, device="cuda").sum().item() == 2.0
