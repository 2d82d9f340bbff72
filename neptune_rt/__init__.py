"""neptune_rt: a low-level runtime for data-parallel training over MPI.

The engine API (numpy / torch / cupy buffers) lives in neptune_rt.engine and is re-exported here;
PyTorch users import neptune_rt.torch. Launch every program with mpirun.
"""
from neptune_rt.engine import (  # noqa: F401
    CODECS, OPS, Handle, allgather, allgather_async, allreduce, allreduce_, allreduce_async, allreduce_async_,
    barrier, broadcast, cost_model, broadcast_, broadcast_async, broadcast_async_, codec_id, comm, init, is_initialized,
    join, local_rank, local_size, poll, rank, shutdown, size, synchronize,
    grouped_allreduce, grouped_allreduce_, grouped_allreduce_async, grouped_allreduce_async_, stats, bucket_records,
    GroupHandle,
)
from neptune_rt.engine import export_residuals, import_residuals, release  # noqa: F401
from neptune_rt.engine import __all__ as _engine_all

__version__ = "0.1.0"
__all__ = list(_engine_all) + ["__version__"]
