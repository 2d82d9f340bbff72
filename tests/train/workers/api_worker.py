"""The Python API as the README shows it: a user's model and optimizer, numpy data, Trainer(...).fit(), no run
directory given. Checks that nothing of the user's was patched, and that goodput's model takes the user optimizer's
momentum. Run by tests/train/test_train_api.py."""
import torch
from neptune_rt.train.datasets import digits_arrays  # sklearn's load_digits, without importing sklearn

from neptune_rt.train import Trainer

data, target = digits_arrays()
x, y = data.astype("float32") / 16, target
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
step_before, forward_before = type(opt).step, type(model).forward
result = Trainer(model, opt, (x[:1400], y[:1400]), (x[1400:], y[1400:]), batch_size=64, epochs=4,
                 progress="off").fit()
assert type(opt) is torch.optim.SGD and type(opt).step is step_before and "step" not in vars(opt), "optimizer patched"
assert type(model) is torch.nn.Sequential and type(model).forward is forward_before and "forward" not in vars(model)
assert result["test_accuracy"] > 0.85, result
assert result["steps"] == 4 * 22 and result["run_dir"].startswith("runs/"), result
# Goodput's efficiency model takes the momentum of the optimizer the user gave, not the config's default (0.9).
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5), (x[:1400], y[:1400]),
                  batch_size=64, steps=3, balance="goodput", progress="off", run_dir="runs/goodput-momentum")
trainer.fit()
assert trainer.balance.scheduler.momentum == 0.5, trainer.balance.scheduler.momentum
print(f"OK {result['test_accuracy']:.4f} {result['run_dir']}", flush=True)
