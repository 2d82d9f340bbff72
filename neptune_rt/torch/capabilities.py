"""Horovod's build and topology queries (`mpi_built`, `nccl_built`, ..., `is_homogeneous`) with the answers that
are true of neptune_rt, and the `init` of neptune_rt.torch, which also learns whether every node runs the same
number of ranks. Tested under mpirun by tests/torch/workers/horovod_compat_worker.py.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from neptune_rt import engine as _engine

__all__ = ["init", "mpi_built", "mpi_enabled", "mpi_threads_supported", "gloo_built", "nccl_built", "cuda_built",
           "rocm_built", "ddl_built", "ccl_built", "is_homogeneous", "homogeneous"]

_homogeneous: bool | None = None


def homogeneous(local_sizes: list[int]) -> bool:
    """Horovod's definition: every node runs the same number of ranks (each rank reports its node's count)."""
    return len(set(local_sizes)) <= 1


def init(comm: Any = None) -> None:
    """Starts the engine over `comm` (an mpi4py communicator; default COMM_WORLD), as neptune_rt.init does,
    then gathers every rank's node size for `is_homogeneous`. Collective; idempotent."""
    global _homogeneous
    started_here = not _engine.is_initialized()
    _engine.init(comm)
    if started_here or _homogeneous is None:
        sizes = _engine.allgather(np.array([_engine.local_size()], dtype=np.int64), name="neptune_rt.torch.init")
        _homogeneous = homogeneous(sizes.tolist())


def mpi_built() -> bool:
    """True: MPI is neptune_rt's only transport; the extension is always built against it."""
    return True


def mpi_enabled() -> bool:
    """True: every byte moves over MPI at run time (there is no Gloo controller to choose instead)."""
    return True


def mpi_threads_supported() -> bool:
    """Whether MPI runs at MPI_THREAD_MULTIPLE (neptune_rt.init refuses to start otherwise)."""
    from mpi4py import MPI
    return MPI.Query_thread() == MPI.THREAD_MULTIPLE


def gloo_built() -> bool:
    """False: no Gloo transport. (torch.distributed's gloo may still serve DDP's set-up; neptune_rt moves
    the gradients.)"""
    return False


def nccl_built() -> bool:
    """False: no NCCL collectives; CUDA tensors are staged through host memory and travel over MPI."""
    return False


def cuda_built() -> bool:
    """True when the optional CUDA module (`neptune_rt._C_cuda`, the codecs' GPU kernels) was compiled. CUDA
    tensors are accepted either way; their data is staged through host memory for the wire."""
    try:
        from neptune_rt import _C_cuda  # noqa: F401
    except ImportError:
        return False
    return True


def rocm_built() -> bool:
    """False: no ROCm build."""
    return False


def ddl_built() -> bool:
    """False: no IBM DDL."""
    return False


def ccl_built() -> bool:
    """False: no oneCCL."""
    return False


def is_homogeneous() -> bool:
    """True if every node runs the same number of ranks. Known after neptune_rt.torch.init()."""
    if _homogeneous is None or not _engine.is_initialized():
        raise RuntimeError("neptune_rt: is_homogeneous() is known once neptune_rt.torch.init() has run (it gathers "
                           "every node's rank count); neptune_rt.init() alone does not gather it")
    return _homogeneous
