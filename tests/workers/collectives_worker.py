"""MPI worker: sweeps the direct collectives (all-reduce by ring, recursive doubling and, in a power-of-two world,
halving-doubling; reduce-scatter, allgatherv, broadcast) over counts x dtypes x ops x segment sizes, against an
exact numpy reference and mpi4py's own collectives, and checks every rank ends bitwise identical. Arguments: the
large count (default 2^22), then "allreduce" to sweep the all-reduce alone. Prints 'OK <rank> <cases>'."""
from __future__ import annotations

import hashlib
import sys

import numpy as np
from mpi4py import MPI

from neptune_rt import _C
from reference import DTYPES, OPS, close, make_data, reduce_reference

WORLD = MPI.COMM_WORLD
MPI_TYPES = {"float32": MPI.FLOAT, "float64": MPI.DOUBLE, "int32": MPI.INT32_T, "int64": MPI.INT64_T}
MPI_OPS = {"sum": MPI.SUM, "min": MPI.MIN, "max": MPI.MAX}
TIMEOUT = 60.0


def same_everywhere(x: np.ndarray) -> bool:
    digest = hashlib.sha1(x.tobytes()).hexdigest()
    return len(set(WORLD.allgather(digest))) == 1


def check_allreduce(comm, count: int, dtype: str, op: str, algo: str, seg: int, seed: int) -> None:
    n, r = comm.size, comm.rank
    inputs = [make_data(dtype, count, k, seed) for k in range(n)]
    x = inputs[r].copy()
    _C.allreduce_inplace(comm, x, dtype, op, algo, seg, TIMEOUT)
    ref = reduce_reference(inputs, dtype, op)
    where = f"allreduce count={count} dtype={dtype} op={op} algo={algo} seg={seg} n={n}"
    assert close(x, ref, dtype, n), f"{where}: max err {np.abs(x.astype(np.float64) - ref.astype(np.float64)).max()}"
    assert same_everywhere(x), f"{where}: ranks disagree"
    if dtype in MPI_TYPES and op in MPI_OPS:
        mpi = np.empty_like(inputs[r])
        WORLD.Allreduce([inputs[r], MPI_TYPES[dtype]], [mpi, MPI_TYPES[dtype]], op=MPI_OPS[op])
        assert close(x, mpi.astype(np.float64) if dtype.startswith("float") else mpi, dtype, n), \
            f"{where}: differs from MPI_Allreduce"


def check_reduce_scatter(comm, count: int, seg: int) -> None:
    n, r = comm.size, comm.rank
    inputs = [make_data("float64", count, k, 7) for k in range(n)]
    counts = [count // n + (1 if k < count % n else 0) for k in range(n)]
    x = inputs[r].copy()
    _C.reduce_scatter_inplace(comm, x, "float64", counts, "sum", seg, TIMEOUT)
    start = sum(counts[:r])
    ref = np.sum(inputs, axis=0)[start:start + counts[r]]
    assert np.allclose(x[start:start + counts[r]], ref), f"reduce_scatter count={count} seg={seg}"


def check_allgatherv(comm, rows: int, seg: int) -> None:
    n, r = comm.size, comm.rank
    sizes = [(rows * (k + 1)) % 7 * 3 for k in range(n)]  # different (and some zero) sizes per rank
    blocks = [np.arange(sizes[k], dtype=np.uint8) + k for k in range(n)]
    buf = np.zeros(sum(sizes), dtype=np.uint8)
    start = sum(sizes[:r])
    buf[start:start + sizes[r]] = blocks[r]
    _C.allgatherv_inplace(comm, buf, sizes, seg, TIMEOUT)
    assert np.array_equal(buf, np.concatenate(blocks)), f"allgatherv sizes={sizes} seg={seg}"
    mpi = WORLD.allgather(blocks[r])
    assert np.array_equal(buf, np.concatenate(mpi))


def check_broadcast(comm, nbytes: int, root: int, seg: int) -> None:
    buf = np.full(nbytes, comm.rank, dtype=np.uint8) if comm.rank != root else \
        np.arange(nbytes, dtype=np.uint64).astype(np.uint8)
    _C.broadcast_inplace(comm, buf, root, seg, TIMEOUT)
    assert np.array_equal(buf, np.arange(nbytes, dtype=np.uint64).astype(np.uint8)), \
        f"broadcast bytes={nbytes} root={root} seg={seg}"


def check_halving_doubling_refused(comm) -> None:
    """Outside a power-of-two world, asking for halving-doubling is refused on every rank, naming the fix."""
    try:
        _C.allreduce_inplace(comm, np.ones(1 << 17, np.float32), "float32", "sum", "halving_doubling", 0, TIMEOUT)
    except ValueError as e:
        assert "power-of-two world" in str(e) and "'ring' or 'auto'" in str(e), str(e)
    else:
        raise AssertionError(f"halving_doubling ran on {comm.size} ranks")


def main() -> None:
    big = int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 22
    allreduce_only = sys.argv[2:] == ["allreduce"]
    comm = _C.Communicator(WORLD)
    cases = 0
    power_of_two = comm.size & (comm.size - 1) == 0
    algos = ["ring", "recursive_doubling", "auto"] + (["halving_doubling"] if power_of_two else [])
    if not power_of_two:
        check_halving_doubling_refused(comm)
        cases += 1
    for count in [0, 1, 7, 1000, 10007]:
        for dtype in DTYPES:
            for op in OPS:
                for algo in algos:
                    for seg in [0, 64] if count > 7 else [0]:
                        check_allreduce(comm, count, dtype, op, algo, seg, seed=count)
                        cases += 1
    for dtype, op in [("float32", "sum"), ("float16", "sum"), ("int64", "max")]:
        for seg in [0, 1 << 16]:
            check_allreduce(comm, big, dtype, op, "auto", seg, seed=3)
            cases += 1
    if allreduce_only:
        print(f"OK {comm.rank} {cases}", flush=True)
        return
    for count in [0, 1, 5, 1000, 100003]:
        for seg in [0, 256]:
            check_reduce_scatter(comm, count, seg)
            cases += 1
    for rows in [0, 1, 5, 200]:
        for seg in [0, 4]:
            check_allgatherv(comm, rows, seg)
            cases += 1
    for nbytes in [0, 1, 1000, 3 << 20]:
        for root in range(comm.size):
            check_broadcast(comm, nbytes, root, 1 << 16 if nbytes > 1000 else 0)
            cases += 1
    print(f"OK {comm.rank} {cases}", flush=True)


if __name__ == "__main__":
    main()
