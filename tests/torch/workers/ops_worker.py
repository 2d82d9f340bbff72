"""Every collective of neptune_rt.torch against torch.distributed (gloo) or a closed-form answer, on the
ranks of one mpirun job. Run by tests/torch/test_ops.py."""
from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist

import neptune_rt.torch as nrt
from common import close, finish, setup

rank, size = setup()
g = torch.Generator().manual_seed(1234 + rank)

# Topology queries against gloo and Open MPI's own variables (all ranks share this one machine).
assert nrt.is_initialized()
assert (rank, size) == (dist.get_rank(), dist.get_world_size()), f"rank {rank}: rank/size differ from gloo's"
assert nrt.local_rank() == int(os.environ["OMPI_COMM_WORLD_LOCAL_RANK"]), f"rank {rank}: local_rank"
assert nrt.local_size() == int(os.environ["OMPI_COMM_WORLD_LOCAL_SIZE"]) == size, f"rank {rank}: local_size"
nrt.barrier()


def gloo_sum(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    out = t.clone()
    dist.all_reduce(out, op=op)
    return out


# allreduce: Horovod's default op is Average, and the input is left untouched.
x = torch.randn(1000, generator=g)
x_before = x.clone()
close("allreduce default average", nrt.allreduce(x, name="avg"), gloo_sum(x) / size)
close("allreduce leaves input", x, x_before, atol=0)
close("allreduce Sum", nrt.allreduce(x, name="sum", op=nrt.Sum), gloo_sum(x))
close("allreduce Min", nrt.allreduce(x, name="min", op=nrt.Min), gloo_sum(x, dist.ReduceOp.MIN), atol=0)
close("allreduce Max", nrt.allreduce(x, name="max", op=nrt.Max), gloo_sum(x, dist.ReduceOp.MAX), atol=0)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    close("allreduce average=False", nrt.allreduce(x, average=False, name="dep"), gloo_sum(x))
close("allreduce pre/postscale", nrt.allreduce(x, name="scaled", op=nrt.Sum, prescale_factor=0.5,
                                               postscale_factor=3.0), gloo_sum(x) * 1.5, atol=1e-5)
# Large enough to leave the eager path and travel through the ring.
big = torch.randn(300_000, generator=g)
close("allreduce ring-sized", nrt.allreduce(big, name="big"), gloo_sum(big) / size, atol=1e-6)
# In place, async, poll/synchronize.
y = x.clone()
h = nrt.allreduce_async_(y, name="inplace", op=nrt.Sum)
out = nrt.synchronize(h)
assert out is y and nrt.poll(h), f"rank {rank}: allreduce_async_ must return its input, done"
close("allreduce_async_", y, gloo_sum(x))
y = x.clone()
assert nrt.allreduce_(y, name="inplace2") is y
close("allreduce_", y, gloo_sum(x) / size)
h = nrt.allreduce_async(x, name="async", op=nrt.Sum)
close("allreduce_async", nrt.synchronize(h), gloo_sum(x))
# dtypes: float64, int32 (sum), bfloat16.
d = torch.randn(64, generator=g, dtype=torch.float64)
close("allreduce float64", nrt.allreduce(d, name="f64"), gloo_sum(d) / size, atol=1e-12)
i = torch.arange(10, dtype=torch.int32) * (rank + 1)
assert torch.equal(nrt.allreduce(i, name="i32", op=nrt.Sum), gloo_sum(i)), f"rank {rank}: int32 sum"
b = torch.randn(256, generator=g).bfloat16()
close("allreduce bfloat16", nrt.allreduce(b, name="bf16", op=nrt.Sum), gloo_sum(b.float()), atol=0.1)
# Compression: the result comes back in the input's dtype, within half precision.
for comp in (nrt.Compression.fp16, nrt.Compression.bf16):
    r = nrt.allreduce(x, name=f"comp.{comp.name}", compression=comp)
    assert r.dtype == torch.float32, f"rank {rank}: {comp} returned {r.dtype}"
    close(f"allreduce {comp}", r, gloo_sum(x) / size, atol=0.03)
    y = x.clone()
    nrt.allreduce_(y, name=f"comp_.{comp.name}", compression=comp)
    close(f"allreduce_ {comp}", y, gloo_sum(x) / size, atol=0.03)

# allgather: first dimensions differ per rank.
mine = torch.full((rank + 1, 3), float(rank))
gathered = nrt.allgather(mine, name="gather")
want = torch.cat([torch.full((r + 1, 3), float(r)) for r in range(size)])
close("allgather", gathered, want, atol=0)
close("allgather_async", nrt.synchronize(nrt.allgather_async(mine, name="gather2")), want, atol=0)

# broadcast against gloo's broadcast from every root.
for root in range(size):
    t = torch.randn(50, generator=g)
    ref = t.clone()
    dist.broadcast(ref, src=root)
    close(f"broadcast root {root}", nrt.broadcast(t, root, name=f"b{root}"), ref, atol=0)
    t2 = t.clone()
    assert nrt.broadcast_(t2, root, name=f"b_{root}") is t2
    close(f"broadcast_ root {root}", t2, ref, atol=0)
    t3 = t.clone()
    close(f"broadcast_async_ root {root}", nrt.synchronize(nrt.broadcast_async_(t3, root, name=f"ba_{root}")),
          ref, atol=0)
    close(f"broadcast_async root {root}", nrt.synchronize(nrt.broadcast_async(t, root, name=f"ba{root}")),
          ref, atol=0)

# Objects.
obj = nrt.broadcast_object({"rank": rank, "list": [1, 2, rank]} if rank == 1 else None, root_rank=1)
assert obj == {"rank": 1, "list": [1, 2, 1]}, f"rank {rank}: broadcast_object gave {obj}"
objs = nrt.allgather_object(("r", rank, "x" * rank))
assert objs == [("r", r, "x" * r) for r in range(size)], f"rank {rank}: allgather_object gave {objs}"

# join: the last rank joins first; the others' all-reduce meanwhile sees its zeros, then they join, so the
# last to join is one of them, and every rank names the same one.
if rank != size - 1:
    s = nrt.allreduce(torch.ones(4), name="while_joining", op=nrt.Sum)
    last = nrt.join()
else:
    last = nrt.join()
lasts = nrt.allgather_object(last, name="join.answers")
assert last in range(size - 1) and lasts == [last] * size, f"rank {rank}: join returned {lasts} on the ranks"
if rank != size - 1:
    close("allreduce with one rank joined", s, torch.full((4,), float(size - 1)), atol=0)

# Autograd through the collectives, as Horovod's: rank r's loss is sum(c_r * y) with c_r = r + 1.
c = float(rank + 1)
csum = sum(range(1, size + 1))
x = torch.randn(5, generator=g, requires_grad=True)
(nrt.allreduce(x, name="ad.sum", op=nrt.Sum) * c).sum().backward()
close("grad of allreduce Sum", x.grad, torch.full((5,), float(csum)))  # sum over ranks of c_r
x.grad = None
(nrt.allreduce(x, name="ad.avg", compression=nrt.Compression.fp16) * c).sum().backward()
close("grad of fp16 allreduce Average", x.grad, torch.full((5,), csum / size), atol=1e-3)  # Average again
x.grad = None
rows = torch.randn(rank + 1, 2, generator=g, requires_grad=True)
(nrt.allgather(rows, name="ad.gather") * c).sum().backward()
close("grad of allgather", rows.grad, torch.full((rank + 1, 2), csum / size))  # averaged, this rank's rows
(nrt.broadcast(x, 1, name="ad.bcast") * c).sum().backward()
close("grad of broadcast", x.grad, torch.full((5,), csum / size if rank == 1 else 0.0))

# Errors name the problem.
try:
    nrt.allreduce(x, name="badop", op="median")
except ValueError as err:
    assert "median" in str(err), err
else:
    raise AssertionError(f"rank {rank}: unknown op accepted")
finish()
