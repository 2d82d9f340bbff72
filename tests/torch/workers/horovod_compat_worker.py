"""What a Horovod script expects of neptune_rt.torch, checked against numpy (every rank builds every rank's input
from its seed) and torch.distributed: int16 and bool tensors, integer pre/post-scaling, join's return value,
the capability queries, a clear error for a None tensor, and the DDP hook's call counter. Each section is named
on the command line (default: all), so one can be run alone. Run by tests/torch/test_ops.py on 3 ranks."""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
import torch.nn as nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

import neptune_rt.torch as nrt
from common import finish, setup

rank, size = setup()


def inputs(dtype: np.dtype, shape: tuple, low: int, high: int) -> list[np.ndarray]:
    """Every rank's input, reproducible on every rank."""
    return [np.random.default_rng(100 + r).integers(low, high, size=shape).astype(dtype) for r in range(size)]


def equal(what: str, got: torch.Tensor, want: np.ndarray) -> None:
    got_np = got.numpy()
    if got_np.dtype != want.dtype or got_np.shape != want.shape or not np.array_equal(got_np, want):
        raise AssertionError(f"rank {rank}: {what}: got {got_np.dtype}{got_np.shape} {got_np.ravel()[:6]}, "
                             f"want {want.dtype}{want.shape} {want.ravel()[:6]}")


def int16_tensors() -> None:
    # Large values, so the sum wraps as int16 addition does in Horovod's reduction.
    xs = inputs(np.int16, (7, 5), -32768, 32767)
    x = torch.from_numpy(xs[rank].copy())
    total = np.zeros_like(xs[0])
    for a in xs:
        total += a  # int16 arithmetic: wraps
    equal("int16 allreduce Sum", nrt.allreduce(x, name="i16.sum", op=nrt.Sum), total)
    wide = np.stack(xs).astype(np.int64)
    equal("int16 allreduce Min", nrt.allreduce(x, name="i16.min", op=nrt.Min), wide.min(0).astype(np.int16))
    equal("int16 allreduce Max", nrt.allreduce(x, name="i16.max", op=nrt.Max), wide.max(0).astype(np.int16))
    # Average: the integer sum divided by the ranks, truncated toward zero (as for every integer type).
    avg = np.trunc(wide.sum(0) / size).astype(np.int16)
    equal("int16 allreduce Average", nrt.allreduce(x, name="i16.avg"), avg)
    y = x.clone()
    assert nrt.allreduce_(y, name="i16.inplace", op=nrt.Sum) is y
    equal("int16 allreduce_", y, total)
    # allgather with uneven first dimensions, and broadcast (also of a 0-d tensor) from every root.
    rows = [inputs(np.int16, (r + 1, 3), -32768, 32767)[r] for r in range(size)]
    equal("int16 allgather", nrt.allgather(torch.from_numpy(rows[rank].copy()), name="i16.gather"),
          np.concatenate(rows))
    flat = inputs(np.int16, (9,), -32768, 32767)
    equal("int16 1-D allgather", nrt.allgather(torch.from_numpy(flat[rank].copy()), name="i16.gather1"),
          np.concatenate(flat))
    for root in range(size):
        equal(f"int16 broadcast root {root}", nrt.broadcast(x, root, name=f"i16.b{root}"), xs[root])
        z = torch.tensor(int(xs[rank][0, 0]), dtype=torch.int16)
        assert nrt.broadcast_(z, root, name=f"i16.b0d{root}") is z
        equal(f"int16 0-d broadcast_ root {root}", z, np.array(xs[root][0, 0]))
    # bool (moved as bytes, as broadcast_parameters needs for masks).
    flags = [a % 2 == 0 for a in xs]
    equal("bool broadcast", nrt.broadcast(torch.from_numpy(flags[rank].copy()), 1, name="bool.b"), flags[1])
    equal("bool allgather", nrt.allgather(torch.from_numpy(flags[rank].copy()), name="bool.g"),
          np.concatenate(flags))
    for dtype in (torch.bool, torch.uint16, torch.complex64):
        try:
            nrt.allreduce(torch.zeros(3, dtype=dtype), name=f"refused.{dtype}")
        except ValueError as err:
            assert str(dtype) in str(err) and "int16" in str(err), err
        else:
            raise AssertionError(f"rank {rank}: an all-reduce of {dtype} was accepted")
    # broadcast_parameters on a state dict with int16 buffers.
    module = nn.Linear(3, 2)
    module.register_buffer("counts", torch.from_numpy(xs[rank][0].copy()))
    nrt.broadcast_parameters(module.state_dict(), root_rank=2 % size)
    equal("broadcast_parameters int16 buffer", module.counts, xs[2 % size][0])


def scaled_integers() -> None:
    # Horovod: each rank's x scaled by prescale in float64 and truncated, summed in the integer type, the sum
    # scaled by postscale and truncated again.
    def trunc(a: np.ndarray, f: float, dtype) -> np.ndarray:
        return np.trunc(a.astype(np.float64) * f).astype(np.int64).astype(dtype)

    for dtype, torch_dtype in ((np.int32, torch.int32), (np.int64, torch.int64), (np.int16, torch.int16)):
        xs = inputs(dtype, (4, 6), -1000, 1000)
        x = torch.from_numpy(xs[rank].copy())
        before = x.clone()
        want = trunc(sum(trunc(a, 0.5, dtype) for a in xs).astype(dtype), 3.0, dtype)
        got = nrt.allreduce(x, name=f"scaled.{dtype.__name__}", op=nrt.Sum, prescale_factor=0.5,
                            postscale_factor=3.0)
        assert got.dtype == torch_dtype, f"rank {rank}: scaled {dtype.__name__} came back as {got.dtype}"
        equal(f"{dtype.__name__} Sum prescale 0.5 postscale 3", got, want)
        equal(f"{dtype.__name__} input untouched", x, before.numpy())
        # Average divides the integer sum by the ranks (truncating) before postscale.
        want_avg = trunc(np.trunc(np.stack(xs).astype(np.int64).sum(0) / size).astype(dtype), 2.5, dtype)
        y = x.clone()
        nrt.synchronize(nrt.allreduce_async_(y, name=f"scaled_avg.{dtype.__name__}", postscale_factor=2.5))
        equal(f"{dtype.__name__} Average postscale 2.5 in place", y, want_avg)
        # A prescale alone, and factors that leave negative values to truncate toward zero.
        want_pre = sum(trunc(a, -0.3, dtype) for a in xs).astype(dtype)
        got = nrt.synchronize(nrt.allreduce_async(x, name=f"scaled_pre.{dtype.__name__}", op=nrt.Sum,
                                                  prescale_factor=-0.3))
        equal(f"{dtype.__name__} Sum prescale -0.3", got, want_pre)


def join_order() -> None:
    # Ranks join in a chosen order, 0.4 s apart; join() returns the last, on every rank.
    for order in ([2, 1, 0], [0, 2, 1]):
        nrt.barrier(name="join.start." + "".join(map(str, order)))
        time.sleep(0.4 * order.index(rank))
        last = nrt.join()
        assert last == order[-1], f"rank {rank}: join in order {order} returned {last}, expected {order[-1]}"
    # Ties (all at once) still give one answer everywhere.
    nrt.barrier(name="join.tie")
    lasts = nrt.allgather_object(nrt.join(name="join.tie"), name="join.tie.answers")
    assert len(set(lasts)) == 1 and 0 <= lasts[0] < size, f"rank {rank}: join answers differ: {lasts}"
    # A documented difference from Horovod: allgather and a broadcast from a root that has not joined run
    # while other ranks have joined (Horovod raises). Rank 0 joins; ranks 1.. gather and broadcast.
    if rank == 0:
        nrt.join(name="join.diff")
    else:
        got = nrt.allgather(torch.full((1, 2), float(rank)), name="join.diff.gather")
        equal("allgather while rank 0 joined", got, np.repeat(np.arange(1, size, dtype=np.float32), 2)
              .reshape(size - 1, 2))
        b = nrt.broadcast(torch.tensor([float(rank)]), 1, name="join.diff.bcast")
        equal("broadcast from rank 1 while rank 0 joined", b, np.array([1.0], dtype=np.float32))
        nrt.join(name="join.diff")


def capabilities() -> None:
    from mpi4py import MPI
    from neptune_rt import info
    facts = {"mpi_built": True, "mpi_enabled": True,
             "mpi_threads_supported": MPI.Query_thread() == MPI.THREAD_MULTIPLE,
             "gloo_built": False, "nccl_built": False, "rocm_built": False, "ddl_built": False, "ccl_built": False,
             "cuda_built": bool(info.collect()["cuda_module_built"])}
    for query, want in facts.items():
        got = getattr(nrt, query)()
        assert got is want, f"rank {rank}: {query}() returned {got!r}, expected {want!r}"
        assert query in nrt.__all__, f"{query} missing from __all__"
    # One node here: every rank sees the same local size. The rule itself on made-up layouts:
    assert nrt.is_homogeneous() is True, f"rank {rank}: is_homogeneous() on one node"
    from neptune_rt.torch.capabilities import homogeneous
    assert homogeneous([2, 2, 2, 2]) and not homogeneous([2, 2, 1]), "homogeneous() rule"


def none_tensor() -> None:
    calls = {
        "broadcast": lambda: nrt.broadcast(None, 0, name="p.grad"),
        "broadcast_": lambda: nrt.broadcast_(None, 0, name="p.grad"),
        "broadcast_async_": lambda: nrt.broadcast_async_(None, 0),
        "allreduce": lambda: nrt.allreduce(None, name="p.grad"),
        "allreduce_": lambda: nrt.allreduce_(None),
        "allreduce_async": lambda: nrt.allreduce_async(None),
        "allgather": lambda: nrt.allgather(None),
        "broadcast_parameters": lambda: nrt.broadcast_parameters({"w.grad": None}, 0),
    }
    for call, fn in calls.items():
        try:
            fn()
        except ValueError as err:
            msg = str(err)
            assert "'tensor' is None" in msg and ".grad" in msg and f"rank {rank}" in msg, f"{call}: {msg}"
        else:
            raise AssertionError(f"rank {rank}: {call}(None) raised nothing")
    try:
        nrt.allreduce([1.0, 2.0], name="list")
    except TypeError as err:
        assert "torch.Tensor" in str(err) and "list" in str(err), err
    else:
        raise AssertionError(f"rank {rank}: allreduce(list) raised nothing")
    nrt.barrier(name="none.done")  # nothing was left half-submitted on any rank


def hook_calls() -> None:
    # The state's counter equals the number of times DDP called a hook (at least once per backward), counted
    # independently by wrapping DDP's own default hook on an identical model; a state never registered stays 0.
    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 300), nn.Tanh(), nn.Linear(300, 4))

    reference_calls = [0]

    def counting_default(state, bucket):
        reference_calls[0] += 1
        return default_hooks.allreduce_hook(state, bucket)

    ours, ref = DDP(model(), bucket_cap_mb=0.004), DDP(model(), bucket_cap_mb=0.004)
    state = nrt.comm_hook.CommHookState(ours.module, prefix="calls")
    ours.register_comm_hook(state, nrt.comm_hook.hook)
    ref.register_comm_hook(None, counting_default)
    unregistered = nrt.comm_hook.CommHookState(prefix="never")
    for step in range(3):
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(step * 10 + rank))
        for m in (ours, ref):
            m(x).sum().backward()
    assert state.calls == reference_calls[0] >= 3, \
        f"rank {rank}: hook state counted {state.calls} calls, DDP made {reference_calls[0]}"
    assert unregistered.calls == 0


SECTIONS = {"int16": int16_tensors, "scaled": scaled_integers, "join": join_order, "capabilities": capabilities,
            "none": none_tensor, "hook": hook_calls}
assert size >= 3, "run on at least 3 ranks"
for section in sys.argv[1:] or list(SECTIONS):
    started = time.perf_counter()
    SECTIONS[section]()
    if rank == 0:
        print(f"section {section}: {time.perf_counter() - started:.1f} s", flush=True)
finish(" ".join(sys.argv[1:]))
