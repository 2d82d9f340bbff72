"""CUDA tensors through neptune_rt.torch on 2 ranks; skipped explicitly where no GPU is visible."""
import pytest
import torch

from mpi_helpers import assert_ok, run_workers

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible here)")
def test_cuda_tensors_match_cpu_results() -> None:
    assert_ok(run_workers("gpu_worker.py", 2, timeout=150), 2)
