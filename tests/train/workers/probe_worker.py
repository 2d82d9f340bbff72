"""The Trainer's memory probe on a model with a BatchNorm layer and a parameter the forward never uses, under mpirun
with --emulate-memory-cap on rank 1: the probe runs (autograd.grad allows the unused parameter), sets the plan's
limits, and leaves no trace (BatchNorm statistics and the random stream, which dropout draws from, as without a
probe). With `cuda` as the second argument the same on the GPU, where CudaMemoryMeter measures (both ranks share the
device; this small model fits whole batches). Run by tests/train/test_train_balance.py and, on a GPU,
tests/torch/test_gpu.py."""
import sys

import torch
from neptune_rt.train.datasets import digits_arrays

import neptune_rt.torch as nrt
from neptune_rt.train import Trainer


class WithUnused(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                                        torch.nn.Dropout(0.2), torch.nn.Linear(32, 10))
        self.unused = torch.nn.Linear(4, 4)  # a branch this forward does not take

    def forward(self, x):
        return self.body(x)


data, target = digits_arrays()
x, y = data.astype("float32") / 16, target
cuda = sys.argv[2:] == ["cuda"]
model = WithUnused()
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
trainer = Trainer(model, opt, (x[:1400], y[:1400]), batch_size=64, steps=2, progress="off", balance="hetero",
                  emulate_memory_cap="" if cuda else "0,0.02", device="cuda" if cuda else "cpu",
                  run_dir=sys.argv[1], seed=3)
trainer._setup()
rank = nrt.rank()
plan = trainer.balance.plan
assert plan.reason.startswith("memory probe: max micro-batch 64/"), plan.reason
want = (64, 64) if cuda else (64, plan.max_micro[1])
assert plan.max_micro == want and (cuda or 1 <= plan.max_micro[1] < 32) and plan.global_batch == 64, plan
bn = model.body[1]
assert torch.equal(bn.running_mean.cpu(), torch.zeros(32)) and torch.equal(bn.running_var.cpu(), torch.ones(32)) \
    and int(bn.num_batches_tracked) == 0, f"rank {rank}: the probe changed the BatchNorm statistics"
rng_state = torch.cuda.get_rng_state if cuda else torch.get_rng_state
after = rng_state()
torch.manual_seed(3 * 1000 + rank + 1)  # what _setup seeds before probing; the dropout of the probe's passes draws
assert torch.equal(after, rng_state()), f"rank {rank}: the probe moved the random stream"
print(f"OK {list(plan.max_micro)}", flush=True)
nrt.shutdown()
