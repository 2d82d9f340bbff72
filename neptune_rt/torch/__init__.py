"""neptune_rt for PyTorch: Horovod's `horovod.torch` surface over the neptune_rt engine, so a Horovod script
runs by changing its import (`import neptune_rt.torch as hvd`), plus a DDP communication hook (`comm_hook`).
Launch with mpirun. Deliberate differences from Horovod are listed in docs/torch.md; tests in tests/torch/.
"""
from neptune_rt.engine import (
    is_initialized, local_rank, local_size, rank, shutdown, size,
)
from neptune_rt.torch import comm_hook
from neptune_rt.torch.capabilities import (
    ccl_built, cuda_built, ddl_built, gloo_built, init, is_homogeneous, mpi_built, mpi_enabled,
    mpi_threads_supported, nccl_built, rocm_built,
)
from neptune_rt.torch.compression import Compression, Compressor
from neptune_rt.torch.functions import (
    allgather_object, broadcast_object, broadcast_optimizer_state, broadcast_parameters,
)
from neptune_rt.torch.ops import (
    Average, Handle, Max, Min, Sum, allgather, allgather_async, allreduce, allreduce_, allreduce_async,
    allreduce_async_, barrier, broadcast, broadcast_, broadcast_async, broadcast_async_, join, poll,
    synchronize,
)
from neptune_rt.torch.onebit_adam import OneBitAdam
from neptune_rt.torch.onebit_lamb import OneBitLamb
from neptune_rt.torch.optimizer import DistributedOptimizer

__all__ = [
    "init", "shutdown", "is_initialized", "rank", "size", "local_rank", "local_size",
    "allreduce", "allreduce_", "allreduce_async", "allreduce_async_", "allgather", "allgather_async",
    "broadcast", "broadcast_", "broadcast_async", "broadcast_async_", "synchronize", "poll", "join", "barrier",
    "broadcast_parameters", "broadcast_optimizer_state", "broadcast_object", "allgather_object",
    "Average", "Sum", "Min", "Max", "Compression", "Compressor", "Handle", "DistributedOptimizer", "OneBitAdam",
    "OneBitLamb", "comm_hook",
    "mpi_built", "mpi_enabled", "mpi_threads_supported", "gloo_built", "nccl_built", "cuda_built", "rocm_built",
    "ddl_built", "ccl_built", "is_homogeneous",
]
