"""MPI worker for tests/schedule/test_schedule_mpi.py; `python schedule_worker.py MODE[:ARG] ...` runs each mode in
turn, in one launch:
  weighted   unequal local batches (one rank accumulating micro-batches) through DistributedOptimizer's weights
             give the single-process full-batch gradient (fp64, relative error < 1e-6); local_backward's squared
             norm equals an independent torch computation
  decisions  a BatchScheduler on every rank, fed through the engine's allgather with real (sleep-skewed)
             timings, makes the same decision everywhere (plan digests compared with mpi4py); the sampler's
             slices cover every sample once; the state round-trips through a checkpoint file mid-run
  probe:R    collective memory probing with a CPU memory cap on rank R only
  probe_error  a probe function that fails (not out of memory) on rank 1 ends the probe on every rank, quickly,
             with an error naming rank 1
  gather     statistics rows all-gathered bit for bit (against mpi4py's allgather)
  pipe       StatsPipe: each step's rows arrive in the next step, around a real gradient all-reduce, bit for bit
             as mpi4py's allgather of the previous step's rows; none in the first step; the unsent row survives
             a (JSON) checkpoint mid-run
Every rank prints 'OK MODE rank R' when a mode succeeds."""
from __future__ import annotations

import json
import os
import pickle
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
from mpi4py import MPI

import neptune_rt.torch as nrt
from neptune_rt.schedule import (BatchScheduler, CpuMemoryMeter, MemoryProbe, PlanSampler, StatsPipe, gather_stats,
                                 local_backward, micro_weights, probe_max_micro, stats_row)
from neptune_rt.schedule.exchange import gather_stats

torch.set_num_threads(1)
nrt.init()
rank, size = nrt.rank(), nrt.size()
comm = MPI.COMM_WORLD


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from neptune_rt.train.datasets import digits_arrays  # sklearn's load_digits, without importing sklearn
    x, y = digits_arrays()
    return torch.tensor(x / 16.0, dtype=torch.float64), torch.tensor(y)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).double()


def fail(msg: str) -> None:
    raise AssertionError(f"rank {rank}: {msg}")



def mode_weighted(arg: str) -> None:
    x, y = digits()
    B = 301
    local = [40, 150, 11, 100][:size]
    local[-1] = B - sum(local[:-1])
    micro = [64, 64, 64, 64][:size]  # rank 1 (150 samples) accumulates 3 micro-batches
    start = sum(local[:rank])
    idx = torch.arange(B)[start:start + local[rank]]
    model = make_model()
    opt = nrt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=[(f"weighted.{n}", p) for n, p in model.named_parameters()],
                                   weight=local[rank] / B)
    sizes = [len(c) for c in torch.split(idx, micro[rank])]
    weights = micro_weights(sizes)
    losses = [lambda c=c, w=w: w * nn.functional.cross_entropy(model(x[c]), y[c])
              for c, w in zip(torch.split(idx, micro[rank]), weights)]
    sq = local_backward(model.parameters(), losses)
    opt.synchronize()
    got = torch.cat([p.grad.flatten() for p in model.parameters()])
    # references: the full-batch gradient in one process, and this rank's own local gradient
    ref_model = make_model()
    nn.functional.cross_entropy(ref_model(x[:B]), y[:B]).backward()
    want = torch.cat([p.grad.flatten() for p in ref_model.parameters()])
    rel = float((got - want).norm() / want.norm())
    if not rel < 1e-6:
        fail(f"weighted gradient differs from the full-batch gradient: relative error {rel:.3g}")
    own = make_model()
    nn.functional.cross_entropy(own(x[idx]), y[idx]).backward()
    own_sq = float(sum((p.grad ** 2).sum() for p in own.parameters()))
    if abs(sq - own_sq) > 1e-9 * own_sq:
        fail(f"local squared norm {sq!r} != {own_sq!r}")
    if rank == 1 and len(sizes) != 3:
        fail(f"expected 3 micro-batches on rank 1, got {sizes}")
    print(f"OK weighted rank {rank} rel_err={rel:.2e}", flush=True)


def mode_decisions(arg: str) -> None:
    slow = [1.0, 1.0, 2.0, 4.0, 1.0][:size]
    n_data = 1000
    kw = dict(adaptive_batch=True, batch_bounds=(64, 512), noise_warmup=3, goodput_interval=4, max_micro=96)
    sched = BatchScheduler(size, 128, **kw)
    sampler = PlanSampler(n_data, rank, size, seed=7)
    seen, digests = [], []
    path = os.path.join(tempfile.gettempdir(), f"nrt_sched_{os.environ.get('OMPI_COMM_WORLD_JOBID', 'x')}.pkl")
    path = comm.bcast(path)
    rng = np.random.default_rng(rank)
    for step in range(24):
        plan = sched.plan
        batch = sampler.next(plan.local_batches)
        seen.append(batch.indices)
        b = len(batch.indices)
        t0 = time.perf_counter()
        time.sleep(0.0002 * slow[rank] * b)  # an uneven rank computing b samples
        compute = time.perf_counter() - t0
        g = rng.standard_normal(8) * 0.1 + 1.0   # a "gradient": noisy around a mean
        local_sq = float(g @ g) * (1 + 10.0 / max(b, 1))
        rows = gather_stats(stats_row(b, compute, local_sq, 1.0 + 10.0 / plan.global_batch, compute))
        sched.observe(rows)
        digests.append(sched.plan.digest())
        if step == 11:  # checkpoint written by rank 0, read by all, into a fresh scheduler
            if rank == 0:
                with open(path + ".tmp", "wb") as f:
                    pickle.dump({"sched": sched.state_dict()}, f)
                os.replace(path + ".tmp", path)
            comm.Barrier()
            with open(path, "rb") as f:
                state = pickle.load(f)["sched"]
            fresh = BatchScheduler(size, 128, **kw)
            fresh.load_state_dict(state)
            if fresh.plan.digest() != sched.plan.digest():
                fail("plan changed across a checkpoint")
            sched = fresh
    everyone = comm.allgather(digests)
    if any(d != digests for d in everyone):
        fail(f"plans differ across ranks: {everyone}")
    if len(sched.history) < 2:
        fail("the scheduler never changed the plan in 24 skewed steps")
    if rank == 0:
        os.remove(path)
    # the sampler's slices: disjoint across ranks in every step, and no sample twice within the epoch
    everyone_seen = comm.allgather(seen)
    epoch = np.concatenate([idx for step in zip(*everyone_seen) for idx in step])
    if len(epoch) > n_data:
        epoch = epoch[:n_data]
    if len(set(epoch.tolist())) != len(epoch):
        fail("the sampler handed out a sample twice within an epoch")
    print(f"OK decisions rank {rank} versions={len(sched.history)} last={sched.plan.describe()}", flush=True)


def mode_probe(arg: str) -> None:
    capped = int(arg)
    x = torch.randn(512, 64, dtype=torch.float32)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    base = sum(p.numel() * p.element_size() * 2 for p in model.parameters())
    cap = 2.5e5 + base if rank == capped else 1e9
    meter = CpuMemoryMeter(capacity_bytes=cap, base_bytes=base)

    def run(b: int) -> None:
        torch.autograd.grad(model(x[:b]).square().mean(), list(model.parameters()))

    # start above the capped rank's limit: its first probes run out of memory while the others succeed
    limits = probe_max_micro(run, meter, MemoryProbe(size, start=256, limit=512))
    if len({tuple(v) for v in comm.allgather(limits)}) != 1:
        fail(f"ranks disagree on the probed limits: {comm.allgather(limits)}")
    if rank == capped:
        def fits(b: int, capacity: float) -> bool:
            try:
                with CpuMemoryMeter(capacity, base).measure():
                    run(b)
                return True
            except MemoryError:
                return False
        # the probe keeps safety (0.9) x capacity: its result and the reference both fit there
        best = max(b for b in range(1, 513) if fits(b, 0.9 * cap))
        if not (fits(limits[rank], 0.9 * cap) and limits[rank] >= 0.95 * best):
            fail(f"probed {limits[rank]}, largest micro-batch within 0.9 x the cap is {best}")
    elif limits[rank] != 512:
        fail(f"uncapped rank probed {limits[rank]}, expected the limit 512")
    print(f"OK probe rank {rank} limits={limits}", flush=True)


def mode_probe_error(arg: str) -> None:
    # A run(b) that fails with anything but out of memory on rank 1: every rank leaves the probe with an error
    # naming rank 1 (the others used to wait for its row: the job ended only by rank 1's abort at exit, and a rank 1
    # that caught its error and went on left them waiting until the engine's timeout).
    meter = CpuMemoryMeter(capacity_bytes=1e9)

    def run(b: int) -> None:
        if rank == 1:
            raise ValueError("a bug in the probe function")

    t0 = time.monotonic()
    try:
        probe_max_micro(run, meter, MemoryProbe(size, start=8, limit=64))
        fail("a failing probe function did not stop the probe")
    except RuntimeError as err:
        if ("rank 1" if rank == 1 else "rank(s) [1]") not in str(err):
            fail(f"the probe's error does not name rank 1: {err}")
    if time.monotonic() - t0 > 20:
        fail(f"the probe took {time.monotonic() - t0:.1f} s to stop")
    print(f"OK probe_error rank {rank}", flush=True)


def mode_gather(arg: str) -> None:
    # every rank's statistics row, bit for bit as mpi4py's own allgather delivers it, 20 rounds
    rng = np.random.default_rng(rank)
    for step in range(20):
        row = list(rng.standard_normal(5) * 10.0 ** rng.integers(-300, 300, 5)) + [float(rank), 1e-310]
        got = gather_stats(row, name=f"gather.{step}")
        want = comm.allgather(row)
        if np.asarray(got).tobytes() != np.asarray(want).tobytes():
            fail(f"round {step}: gathered rows differ from MPI's allgather: {got} vs {want}")
    print(f"OK gather rank {rank}", flush=True)


def mode_pipe(arg: str) -> None:
    x, y = digits()
    model = make_model()
    opt = nrt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05),
                                   named_parameters=[(f"pipe.{n}", p) for n, p in model.named_parameters()])
    rng = np.random.default_rng(rank)
    pipe, sent = StatsPipe(), None
    for step in range(12):
        if step == 6:  # checkpoint and resume: a fresh pipe from the saved state sends the same row
            state = json.loads(json.dumps(pipe.state_dict()))
            pipe = StatsPipe()
            pipe.load_state_dict(state)
        pipe.send()
        opt.zero_grad()
        part = slice(rank * 40 + step, rank * 40 + step + 32)
        nn.functional.cross_entropy(model(x[part]), y[part]).backward()
        opt.step()
        rows = pipe.receive()
        if step == 0 and rows is not None:
            fail(f"first step received rows {rows} before any was recorded")
        if step > 0:
            want = comm.allgather(sent)
            if np.asarray(rows).tobytes() != np.asarray(want).tobytes():
                fail(f"step {step}: rows {rows} differ from the previous step's rows {want}")
        sent = stats_row(int(rng.integers(1, 99)), float(rng.random()), float(rng.random()), 1.5, float(step))
        pipe.record(sent)
    print(f"OK pipe rank {rank}", flush=True)


def run_modes(modes: list[str]) -> None:
    """Runs each MODE[:ARG] in turn in this one launch (each launch costs every rank seconds of start-up)."""
    for item in modes:
        mode, _, arg = item.partition(":")
        runner = globals().get(f"mode_{mode}")
        if runner is None:
            fail(f"unknown mode {mode}")
        runner(arg)


run_modes(sys.argv[1:])
nrt.shutdown()
