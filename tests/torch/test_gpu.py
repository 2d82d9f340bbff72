"""CUDA tensors through neptune_rt.torch on 2 ranks, and the Trainer's CUDA memory probe; skipped explicitly where no
GPU is visible."""
from pathlib import Path

import pytest
import torch

from mpi_helpers import assert_ok, run_mpi, run_workers

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible here)")
def test_cuda_tensors_match_cpu_results() -> None:
    assert_ok(run_workers("gpu_worker.py", 2, timeout=150), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible here)")
def test_trainer_probes_cuda_memory_without_a_trace(tmp_path) -> None:
    worker = Path(__file__).parents[1] / "train" / "workers" / "probe_worker.py"
    assert_ok(run_mpi(worker, 2, str(tmp_path / "run"), "cuda", timeout=150), 2)
